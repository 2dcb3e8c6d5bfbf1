"""Frame-index samplers for video re-ID clips (pure NumPy).

Every sampler maps a tracklet length ``num_frames`` (L) to frame indices into that tracklet:
training samplers return one clip, shape (T,); evaluation samplers return (num_clips, T).
Random draws come from an explicit ``np.random.Generator`` so that a clip is a pure function
of the generator's seed (the input pipeline keys it by (seed, step)).

Samplers (T = seq_len; the release fixes T = 8, every rule below reduces to it):

* ``rrs`` (Restricted Random Sampling, built as STE-NVAN builds it; the paper's choice):
  I = ceil(L / T) equal chunks of I slots over the frame list padded with the *last* frame
  (L < T: one frame per chunk, padded with the last frame). Train: one random slot per chunk,
  independently. Test: slot 0 of every chunk, i.e. frames 0, I, 2I, ... clipped to L - 1.
  L = 9 -> chunks {0,1},{2,3},{4,5},{6,7},{8,8},{8,8},{8,8},{8,8}; test 0,2,4,6,8,8,8,8.
  L = 13 -> test 0,2,4,6,8,10,12,12. L = 100 -> test 0,13,26,...,91.
* ``random_interval`` (the release's training sampler): stride s = the largest of
  ``strides`` = (8, 4, 2, 1) with L >= T*s; window start b uniform in {0..max(0, L - T*s - 1)}
  (the release's off-by-one: the last frame is never sampled unless L == T*s); one uniform
  frame in each of T blocks of s frames from b. L < T: T indices with replacement, sorted.
  Generalised from 8 to T in the thresholds (T*s), the window (T*s) and the L < T branch; the
  stride set (8, 4, 2, 1) is kept as the release has it.
* ``begin_interval`` (the release's MARS test sampler, deterministic): the largest stride s
  with L >= s*(T-1) + 1 gives frames 0, s, ..., s*(T-1); L < T cycles from the start
  (L = 3 -> 0,1,2,0,1,2,0,1). Generalised from 8 to T in the same way.
* ``dense`` (the release's Duke test sampler): L > T gives I = L // T interleaved clips,
  clip k = k, k+I, ..., k+(T-1)I (the last L mod T frames are dropped); L <= T gives one
  cyclically padded clip. More than ``max_clips`` (200) clips keep a contiguous run of
  max_clips clips; its start is drawn uniformly from {0..I - max_clips - 1} as the release
  draws it (with Python ``random``, so not reproducible there; here from the given
  generator): the run that ends at the last clip is never kept. Only Duke's tracklets of
  1,608+ frames are capped, and the dense sampler exists to reproduce the release's Duke
  evaluation, so it keeps the release's rule rather than a uniform draw over all runs.

Worked examples with T = 8 (from the protocol notes, section 3.6):

  L  | rrs test        | begin_interval  | dense
  1  | 0 x 8           | 0 x 8           | [0 x 8]
  3  | 0,1,2,2,2,2,2,2 | 0,1,2,0,1,2,0,1 | [0,1,2,0,1,2,0,1]
  7  | 0..6,6          | 0..6,0          | [0..6,0]
  9  | 0,2,4,6,8,8,8,8 | 0..7            | [0..7]
  15 | 0,2,...,14      | 0,2,...,14      | [0..7]
  29 | 0,4,...,28      | 0,4,...,28      | 3 clips, stride 3
  65 | 0,9,...,63      | 0,8,...,56      | 8 clips, stride 8
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

RELEASE_STRIDES = (8, 4, 2, 1)
DENSE_MAX_CLIPS = 200

TRAIN_SAMPLERS = ("rrs", "random_interval")
EVAL_SAMPLERS = ("rrs", "begin_interval", "dense")


def _check_lengths(num_frames: int, seq_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a tracklet needs at least one frame, got num_frames={num_frames}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")


def _cyclic(num_frames: int, seq_len: int) -> np.ndarray:
    """0, 1, ..., L-1, 0, 1, ... up to seq_len entries: (T,) int64."""
    return np.arange(seq_len, dtype=np.int64) % num_frames


def rrs_chunks(num_frames: int, seq_len: int) -> np.ndarray:
    """NVAN's RRS chunk table: (T, I) frame indices, I = ceil(L / T) (1 when L < T).

    The frame list is padded with the last frame to T*I entries; chunk s is entries
    [s*I, (s+1)*I). Chunks are equal in size, not in content.
    """
    _check_lengths(num_frames, seq_len)
    slots = max(1, math.ceil(num_frames / seq_len))
    padded = np.minimum(np.arange(seq_len * slots, dtype=np.int64), num_frames - 1)
    return padded.reshape(seq_len, slots)


def rrs_train(num_frames: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random slot of every RRS chunk: (T,) int64, non-decreasing."""
    chunks = rrs_chunks(num_frames, seq_len)
    picks = rng.integers(0, chunks.shape[1], size=seq_len)
    return chunks[np.arange(seq_len), picks]


def rrs_test(num_frames: int, seq_len: int) -> np.ndarray:
    """Slot 0 of every RRS chunk: (T,) int64 = min(arange(T) * I, L - 1)."""
    return rrs_chunks(num_frames, seq_len)[:, 0].copy()


def random_interval(
    num_frames: int,
    seq_len: int,
    rng: np.random.Generator,
    strides: tuple[int, ...] = RELEASE_STRIDES,
) -> np.ndarray:
    """The release's ``Random_interval`` training sampler: (T,) int64, non-decreasing."""
    _check_lengths(num_frames, seq_len)
    if num_frames < seq_len:
        return np.sort(rng.integers(0, num_frames, size=seq_len)).astype(np.int64)
    stride = next((s for s in sorted(strides, reverse=True) if num_frames >= seq_len * s), 1)
    # The release draws the start from randint(0, max(0, L - T*s - 1)), inclusive bounds.
    start = int(rng.integers(0, max(0, num_frames - seq_len * stride - 1) + 1))
    offsets = rng.integers(0, stride, size=seq_len)
    return start + np.arange(seq_len, dtype=np.int64) * stride + offsets


def begin_interval(
    num_frames: int, seq_len: int, strides: tuple[int, ...] = RELEASE_STRIDES
) -> np.ndarray:
    """The release's ``Begin_interval`` test sampler: (T,) int64, deterministic."""
    _check_lengths(num_frames, seq_len)
    if num_frames < seq_len:
        return _cyclic(num_frames, seq_len)
    for stride in sorted(strides, reverse=True):
        if num_frames >= stride * (seq_len - 1) + 1:
            return np.arange(seq_len, dtype=np.int64) * stride
    return np.arange(seq_len, dtype=np.int64)


def dense(
    num_frames: int,
    seq_len: int,
    rng: np.random.Generator | None = None,
    max_clips: int | None = DENSE_MAX_CLIPS,
) -> np.ndarray:
    """The release's ``dense`` test sampler: (num_clips, T) int64.

    ``rng`` draws the start of the kept run when there are more than ``max_clips`` clips; it
    is required only then. ``max_clips=None`` keeps every clip.
    """
    _check_lengths(num_frames, seq_len)
    if num_frames <= seq_len:
        return _cyclic(num_frames, seq_len)[None, :]
    num_clips = num_frames // seq_len
    starts = np.arange(num_clips, dtype=np.int64)
    if max_clips is not None and num_clips > max_clips:
        if rng is None:
            raise ValueError(
                f"dense: a tracklet of {num_frames} frames gives {num_clips} > max_clips="
                f"{max_clips} clips; pass an rng to choose the kept run"
            )
        first = int(rng.integers(0, num_clips - max_clips))  # the release's range
        starts = starts[first : first + max_clips]
    return starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :] * num_clips


def train_sampler(name: str) -> Callable[[int, int, np.random.Generator], np.ndarray]:
    """The training sampler called ``name``: f(num_frames, seq_len, rng) -> (T,)."""
    if name == "rrs":
        return rrs_train
    if name == "random_interval":
        return random_interval
    raise ValueError(f"unknown training frame sampler {name!r}; expected one of {TRAIN_SAMPLERS}")


def eval_clips(
    name: str,
    num_frames: int,
    seq_len: int,
    rng: np.random.Generator | None = None,
    max_clips: int | None = DENSE_MAX_CLIPS,
) -> np.ndarray:
    """Evaluation clips of one tracklet with the sampler called ``name``: (num_clips, T)."""
    if name == "rrs":
        return rrs_test(num_frames, seq_len)[None, :]
    if name == "begin_interval":
        return begin_interval(num_frames, seq_len)[None, :]
    if name == "dense":
        return dense(num_frames, seq_len, rng, max_clips)
    raise ValueError(f"unknown evaluation frame sampler {name!r}; expected one of {EVAL_SAMPLERS}")
