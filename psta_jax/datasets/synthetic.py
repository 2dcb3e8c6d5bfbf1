"""A synthetic video re-ID dataset written in MARS's exact raw layout.

    python -m psta_jax.datasets.synthetic --out=data/synthetic_mars [--seed=0] [--num_train_ids=32]
    (console script: psta-synthetic)

The MARS builder reads the result unchanged (`datasets.build('mars', raw_dir=...)`):

    <out>/bbox_train/<pid4>/<pid4>C<c>T<tttt>F<fff>.jpg
    <out>/bbox_test/<pid4>/...            incl. "0000" (distractors) and "00-1" (junk)
    <out>/info/train_name.txt, test_name.txt, tracks_train_info.mat (track_train_info, int32
          N x 4 [start, end, pid, camera], 1-based inclusive rows), tracks_test_info.mat
          (track_test_info, rows sorted by pid: -1, 0, real ids), query_IDX.mat (query_IDX,
          uint16 1 x Q, 1-based rows, ascending)
    <out>/SYNTHETIC.json                  the generator config and the files it wrote (not MARS)

A person is a figure of coloured parts (hair, skin, upper body with a pattern, legs, shoes, an
optional bag) that walks (leg swing) and jitters from frame to frame. Each camera has its own
colour cast, brightness and background, every frame has pixel noise, and some frames are
occluded or misaligned (shifted crop), so one frame does not identify a person trivially but a
small network learns the identities in a few hundred steps. `noise_std`, `occlusion_prob`,
`misalign_prob` and `camera_variation` set the difficulty (the demo's is easier than the
default). Test identities appear in >= 2 cameras, and two cameras hold >= 2 tracklets so
every query has a cross-camera gallery match, except `num_unmatched_ids` ids seen once in
each of two cameras (both tracklets are queries: they only match under the MARS protocol,
which appends the queries to the gallery). Output is byte-identical for the same config and
seed.

Folders: files are written into a new folder `<out>.partial-<random>` and moved into place at
the end; nothing deletes or replaces a file or folder this module did not create. A run
(`ensure`) generates a missing or empty folder and never regenerates one: a folder generated
with another config stops it with `SyntheticConfigMismatchError`. Only `psta-synthetic
--overwrite` (`replace`) replaces a dataset, and only the generator's own untouched output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from absl import flags, logging

from psta_jax.datasets import raw_io
from psta_jax.datasets.mars import layout
from psta_jax.runtime import cli, errors
from psta_jax.runtime.errors import ConfigError, UserError

MARKER_FILE = "SYNTHETIC.json"
# A marker written before these fields existed recorded their default implicitly.
_FIELDS_ADDED_LATER = {"camera_variation": 1.0}
_MAX_PID = 1500  # Pids are drawn from 1.._MAX_PID (MARS folders hold 4-digit pids).


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and difficulty of the synthetic dataset."""

    seed: int = 0
    num_train_ids: int = 32
    num_test_ids: int = 32  # Includes the unmatched ones.
    num_unmatched_ids: int = 2  # Test ids whose queries have no gallery match.
    num_distractor_tracklets: int = 16  # pid 0, gallery only.
    num_junk_tracklets: int = 8  # pid -1, dropped by the builder.
    num_cameras: int = 4
    max_tracklets_per_camera: int = 2
    min_frames: int = 4
    max_frames: int = 24
    height: int = 64
    width: int = 32
    noise_std: float = 10.0
    occlusion_prob: float = 0.1
    misalign_prob: float = 0.1
    jpeg_quality: int = 90
    camera_variation: float = 1.0  # Scales each camera's colour cast and brightness (0: none).

    def validate(self) -> None:
        problems = []
        if not 1 <= self.num_cameras <= 9:
            problems.append("num_cameras must be in 1..9 (one digit in MARS file names)")
        if self.num_cameras < 2:
            problems.append("num_cameras must be >= 2 (test ids need two cameras)")
        if self.max_tracklets_per_camera < 2:
            problems.append("max_tracklets_per_camera must be >= 2")
        if not 1 <= self.min_frames <= self.max_frames <= 900:
            problems.append("need 1 <= min_frames <= max_frames <= 900")
        if not 0 <= self.num_unmatched_ids < self.num_test_ids:
            problems.append("need 0 <= num_unmatched_ids < num_test_ids")
        if self.num_train_ids < 1 or self.num_train_ids + self.num_test_ids > _MAX_PID:
            problems.append(f"need num_train_ids >= 1 and num_train + num_test <= {_MAX_PID}")
        if self.height < 16 or self.width < 8:
            problems.append("frames must be at least 16 x 8")
        if not 0.0 <= self.camera_variation <= 3.0:
            problems.append("camera_variation must be in [0, 3] (1: the default colour casts)")
        if problems:
            raise ValueError(f"invalid SyntheticConfig {self}: " + "; ".join(problems))


def config_with(sizes: Mapping[str, int | float]) -> SyntheticConfig:
    """The default SyntheticConfig with the fields of `sizes` (config.dataset.synthetic_sizes)
    changed."""
    fields = {field.name for field in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(sizes) - set(fields))
    if unknown:
        raise ConfigError(
            f"config.dataset.synthetic_sizes: unknown field(s) {unknown}; expected fields of "
            f"SyntheticConfig: {sorted(fields)}"
        )
    config = dataclasses.replace(SyntheticConfig(), **sizes)
    try:
        config.validate()
    except ValueError as error:
        raise ConfigError(f"config.dataset.synthetic_sizes: {error}") from error
    return config


@dataclasses.dataclass(frozen=True)
class Appearance:
    """What makes one person recognisable (colours are RGB floats in 0..255)."""

    hair: np.ndarray
    skin: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    shoes: np.ndarray
    pattern_colour: np.ndarray
    pattern: int  # 0 plain, 1 horizontal stripes, 2 left/right two-tone.
    stripe_period: float  # In rows.
    torso_half_width: float  # Fraction of the frame width.
    bag_side: int  # 0 none, -1 left, +1 right.
    bag_colour: np.ndarray


@dataclasses.dataclass(frozen=True)
class CameraStyle:
    gain: np.ndarray  # (3,) per-channel colour cast.
    brightness: float
    background: np.ndarray  # (3,) base colour.
    gradient: np.ndarray  # (3,) colour change from left to right.


@dataclasses.dataclass(frozen=True)
class TrackletSpec:
    pid: int
    camera: int  # 1-based, as in MARS file names.
    number: int  # T field, 1-based per (pid, camera).
    first_frame: int  # F field of the first frame (not always 1, as in MARS).
    num_frames: int
    appearance: Appearance


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(15.0, 240.0, size=3)


def random_appearance(rng: np.random.Generator) -> Appearance:
    return Appearance(
        hair=rng.uniform(10.0, 120.0, size=3),
        skin=np.array([200.0, 160.0, 130.0]) * rng.uniform(0.5, 1.1),
        upper=_colour(rng),
        lower=_colour(rng),
        shoes=rng.uniform(10.0, 200.0, size=3),
        pattern_colour=_colour(rng),
        pattern=int(rng.integers(0, 3)),
        stripe_period=float(rng.uniform(3.0, 7.0)),
        torso_half_width=float(rng.uniform(0.2, 0.3)),
        bag_side=int(rng.choice([0, 0, -1, 1])),
        bag_colour=_colour(rng),
    )


def camera_styles(
    num_cameras: int, rng: np.random.Generator, variation: float = 1.0
) -> list[CameraStyle]:
    """Per-camera looks; `variation` scales the colour cast (gain - 1) and the brightness
    shift. At 1.0 the values are exactly the unscaled draws (g - 1 and back is exact in floats),
    so datasets written before the field existed are reproduced byte for byte."""
    return [
        CameraStyle(
            gain=1.0 + variation * (rng.uniform(0.7, 1.3, size=3) - 1.0),
            brightness=variation * float(rng.uniform(-30.0, 30.0)),
            background=rng.uniform(40.0, 200.0, size=3),
            gradient=rng.uniform(-40.0, 40.0, size=3),
        )
        for _ in range(num_cameras)
    ]


def render_frame(
    appearance: Appearance,
    style: CameraStyle,
    *,
    shape: tuple[int, int],
    offset: tuple[float, float],
    phase: float,
    lighting: float,
    noise: np.ndarray,
    occluder: tuple[int, int, int, int, np.ndarray] | None,
    figure: bool = True,
) -> np.ndarray:
    """One (H, W, 3) uint8 frame.

    Args:
      offset: (dy, dx) displacement of the figure in pixels.
      phase: walking phase in radians (leg swing).
      lighting: per-tracklet brightness factor.
      noise: (H, W, 3) additive pixel noise.
      occluder: (y0, y1, x0, x1, colour) rectangle drawn over the figure, or None.
      figure: False draws the background only (junk crops).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx / max(w - 1, 1))[..., None]
    image = style.background + ramp * style.gradient
    image = np.broadcast_to(image, (h, w, 3)).copy()

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        image[mask] = colour

    def box(y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)

    if figure:
        dy, dx = offset
        cx = w / 2 + dx
        top = 0.04 * h + dy
        half = appearance.torso_half_width * w
        # Legs swing in opposite directions; shoes follow their leg.
        swing = 0.08 * w * np.sin(phase)
        leg_w = 0.42 * half * 2
        for side, s in ((-1, swing), (1, -swing)):
            x_leg = cx + side * 0.5 * half + s
            paint(
                box(top + 0.52 * h, top + 0.9 * h, x_leg - leg_w / 2, x_leg + leg_w / 2),
                appearance.lower,
            )
            paint(
                box(top + 0.9 * h, top + 0.96 * h, x_leg - leg_w / 2, x_leg + leg_w / 2 + 1),
                appearance.shoes,
            )
        torso = box(top + 0.17 * h, top + 0.54 * h, cx - half, cx + half)
        paint(torso, appearance.upper)
        if appearance.pattern == 1:
            paint(torso & ((yy - top) % appearance.stripe_period < 1.5), appearance.pattern_colour)
        elif appearance.pattern == 2:
            paint(torso & (xx >= cx), appearance.pattern_colour)
        if appearance.bag_side:
            bx = cx + appearance.bag_side * (half + 0.1 * w)
            paint(
                box(top + 0.3 * h, top + 0.5 * h, bx - 0.1 * w, bx + 0.1 * w), appearance.bag_colour
            )
        head_cy, head_ry, head_rx = top + 0.09 * h, 0.075 * h, 0.15 * w
        head = ((yy - head_cy) / head_ry) ** 2 + ((xx - cx) / head_rx) ** 2 <= 1.0
        paint(head, appearance.skin)
        paint(head & (yy < head_cy - 0.2 * head_ry), appearance.hair)

    if occluder is not None:
        y0, y1, x0, x1, colour = occluder
        paint(box(y0, y1, x0, x1), colour)

    image = image * style.gain * lighting + style.brightness + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _tracklet_frames(
    spec: TrackletSpec,
    style: CameraStyle,
    config: SyntheticConfig,
    rng: np.random.Generator,
    *,
    junk: bool = False,
) -> Iterator[np.ndarray]:
    h, w = config.height, config.width
    lighting = float(rng.uniform(0.85, 1.15))
    phase = float(rng.uniform(0.0, 2 * np.pi))
    base = np.array([rng.normal(0.0, 0.03 * h), rng.normal(0.0, 0.05 * w)])
    for _ in range(spec.num_frames):
        phase += 0.7
        offset = base + rng.normal(0.0, [0.015 * h, 0.03 * w])
        if junk or rng.random() < config.misalign_prob:  # Shifted crop.
            sign = rng.choice([-1.0, 1.0], size=2)
            offset = offset + sign * rng.uniform([0.05 * h, 0.2 * w], [0.15 * h, 0.4 * w])
        occluder = None
        if rng.random() < config.occlusion_prob:
            y0 = int(rng.integers(0, h // 2))
            x0 = int(rng.integers(0, w // 2))
            occluder = (y0, y0 + h // 2, x0, x0 + int(rng.integers(w // 3, w)), _colour(rng))
        noise = rng.normal(0.0, config.noise_std, size=(h, w, 3))
        yield render_frame(
            spec.appearance,
            style,
            shape=(h, w),
            offset=(float(offset[0]), float(offset[1])),
            phase=phase,
            lighting=lighting,
            noise=noise,
            occluder=occluder,
            figure=not junk or rng.random() < 0.5,
        )


def _tracklets_of(
    pid: int,
    appearance: Appearance,
    cameras_and_counts: list[tuple[int, int]],
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> list[TrackletSpec]:
    specs = []
    for camera, count in sorted(cameras_and_counts):
        for number in range(1, count + 1):
            first = 1 if rng.random() < 0.8 else int(rng.integers(2, 60))
            length = int(rng.integers(config.min_frames, config.max_frames + 1))
            specs.append(TrackletSpec(pid, camera, number, first, length, appearance))
    return specs


def _identity_tracklets(
    pid: int, config: SyntheticConfig, rng: np.random.Generator, *, matched_test: bool
) -> list[TrackletSpec]:
    """Tracklets of one identity in >= 2 cameras; a matched test id gets >= 2 tracklets in
    two of its cameras, so every one of its queries has a gallery match in another camera."""
    num_cams = int(rng.integers(2, config.num_cameras + 1))
    cameras = sorted(rng.choice(np.arange(1, config.num_cameras + 1), num_cams, replace=False))
    counts = rng.integers(1, config.max_tracklets_per_camera + 1, size=num_cams)
    if matched_test:
        counts[rng.choice(num_cams, 2, replace=False)] = rng.integers(
            2, config.max_tracklets_per_camera + 1, size=2
        )
    appearance = random_appearance(rng)
    return _tracklets_of(pid, appearance, list(zip(cameras, counts, strict=True)), config, rng)


def _numbered_singletons(
    pid: int, cameras: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
) -> list[TrackletSpec]:
    """One tracklet per entry of `cameras`, each with its own appearance (distractors, junk)."""
    specs, numbers = [], {}
    for camera in sorted(int(c) for c in cameras):
        numbers[camera] = numbers.get(camera, 0) + 1
        first = int(rng.integers(1, 60))
        length = int(rng.integers(config.min_frames, config.max_frames + 1))
        specs.append(
            TrackletSpec(pid, camera, numbers[camera], first, length, random_appearance(rng))
        )
    return specs


def _write_split(
    out: str,
    image_folder: str,
    specs: list[TrackletSpec],
    styles: list[CameraStyle],
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Renders and writes the frames of `specs` (in name-list order); returns the track info."""

    def encoded(spec: TrackletSpec) -> Iterator[bytes]:
        style = styles[spec.camera - 1]
        for pixels in _tracklet_frames(spec, style, config, rng, junk=spec.pid == -1):
            yield raw_io.encode_image(pixels, "jpeg", quality=config.jpeg_quality)

    tracklets = [
        (layout.TrackletName(spec.pid, spec.camera, spec.number, spec.first_frame), encoded(spec))
        for spec in specs
    ]
    return layout.write_split(out, image_folder, tracklets)


def _query_rows(test_specs: list[TrackletSpec], rng: np.random.Generator) -> np.ndarray:
    """One query tracklet per (real pid, camera) pair, as in MARS: 1-based rows, ascending."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for row, spec in enumerate(test_specs, start=1):
        if spec.pid > 0:
            by_pair.setdefault((spec.pid, spec.camera), []).append(row)
    return np.sort([int(rng.choice(rows)) for _, rows in sorted(by_pair.items())])


class SyntheticFolderError(UserError, FileExistsError):
    """The output folder holds files the generator did not write (they are never deleted)."""


class SyntheticConfigMismatchError(UserError, FileExistsError):
    """The folder holds a synthetic dataset of another config than a run asks for; a run never
    regenerates it (the message names the folder, the difference and the ways out)."""


class SyntheticWriteError(UserError, OSError):
    """The synthetic dataset could not be written (disk full, a read-only folder)."""


def _all_files(root: str) -> dict[str, int]:
    """{path relative to root: size} of every file under `root` (a link counts as a file)."""
    found = {}
    for folder, subfolders, names in os.walk(root):
        links = [name for name in subfolders if os.path.islink(os.path.join(folder, name))]
        for name in [*names, *links]:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


def _empty_folders(root: str) -> list[str]:
    """Folders under `root` that hold nothing ('<relative path>/')."""
    return [
        os.path.relpath(folder, root) + "/"
        for folder, subfolders, names in os.walk(root)
        if folder != root and not subfolders and not names
    ]


def foreign_files(out: str) -> list[str]:
    """Files under `out` that are not the generator's untouched output (relative paths).

    The marker file lists every file the generator wrote with its size; an added, resized or
    missing file, an empty folder, or a marker without that list (an older version wrote it),
    shows that the folder holds something a user may want to keep. A missing file counts as
    '<name> (missing)', an empty folder as '<name>/'.
    """
    marker = os.path.join(out, MARKER_FILE)
    try:
        with open(marker) as f:
            written = json.load(f).get("files")
    except (OSError, ValueError, AttributeError):
        written = None
    found = _all_files(out)
    found.pop(MARKER_FILE, None)
    empty = _empty_folders(out)
    if not isinstance(written, dict):
        return sorted(found) + sorted(empty)
    changed = [name for name, size in found.items() if written.get(name) != size]
    missing = [f"{name} (missing)" for name in written if name not in found]
    return sorted(changed) + sorted(empty) + sorted(missing)


def _recorded_config(out: str) -> dict | None:
    """The generator config recorded in `out`'s marker file; None without a readable one."""
    try:
        with open(os.path.join(out, MARKER_FILE)) as f:
            recorded = json.load(f)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recorded, dict):
        return None
    return {**_FIELDS_ADDED_LATER, **recorded}


def _config_difference(out: str, config: SyntheticConfig) -> str:
    """'num_train_ids 40 -> 32, ...' between the config recorded in `out` and `config`."""
    recorded = _recorded_config(out)
    if recorded is None:
        return "unknown config"
    wanted = dataclasses.asdict(config)
    changes = [f"{k} {recorded.get(k)} -> {v}" for k, v in wanted.items() if recorded.get(k) != v]
    return ", ".join(changes) or "same config"


def command_flags(config: SyntheticConfig) -> str:
    """The psta-synthetic flags that write `config` (the fields that differ from the
    defaults), e.g. ' --num_train_ids=50'; empty for the default config."""
    defaults = dataclasses.asdict(SyntheticConfig())
    wanted = dataclasses.asdict(config)
    return "".join(f" --{k}={v}" for k, v in wanted.items() if defaults[k] != v)


def _listed(names: list[str]) -> str:
    text = ", ".join(names[:10])
    if len(names) > 10:
        text += f" and {len(names) - 10} more"
    return text


def _refuse(out: str, why: str, foreign: list[str]) -> SyntheticFolderError:
    return SyntheticFolderError(
        f"synthetic MARS: {out} {why}, with files the generator did not write or that "
        f"changed since: {_listed(foreign)}. Nothing was deleted. Move those files elsewhere, "
        f"delete {out} yourself, or point --config.dataset.raw_dir (or --out) at a new folder."
    )


def _mismatch(out: str, config: SyntheticConfig) -> SyntheticConfigMismatchError:
    """The error for a run that asks for `config` where `out` holds another synthetic set."""
    foreign = foreign_files(out)
    first = (
        f"; first move out the files the generator did not write or that changed since: "
        f"{_listed(foreign)}"
        if foreign
        else ""
    )
    return SyntheticConfigMismatchError(
        f"synthetic MARS: {out} holds a synthetic dataset generated with another config than "
        f"this run asks for (recorded -> asked: {_config_difference(out, config)}). A run "
        "never regenerates or deletes a dataset folder; nothing was changed. Either\n"
        "  - point --config.dataset.raw_dir at another folder (a missing or empty one is "
        "generated with the sizes this run asks for), or\n"
        f"  - regenerate {out} with those sizes: psta-synthetic --out={out} --overwrite"
        f"{command_flags(config)} (it replaces only a folder that holds nothing but its own "
        f"untouched output{first}), or delete {out} yourself and run again."
    )


def _own_folder(out: str, kind: str) -> str:
    """A new empty folder `<out>.<kind>-<random>` beside `out`, created here: the only kind
    of temporary folder this module ever deletes (never a folder that existed before)."""
    base = os.path.normpath(out)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for _ in range(100):
        path = f"{base}.{kind}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free name {base}.{kind}-* for a temporary folder")


def _remove_own(path: str) -> None:
    """Deletes a temporary folder this call created with `_own_folder`, if it is still there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)


def _write_error(out: str, error: OSError) -> SyntheticWriteError | None:
    """One message for a write that failed because the disk is full or the folder is
    read-only; None for any other error."""
    found = errors.find_os_error(error, errors.FULL_DISK_ERRNOS + errors.NOT_WRITABLE_ERRNOS)
    if found is None:
        return None
    code, _ = found
    parent = os.path.dirname(os.path.normpath(out)) or "."
    fix = "Free disk space there" if code in errors.FULL_DISK_ERRNOS else f"Make {parent} writable"
    return SyntheticWriteError(
        f"synthetic MARS: cannot write {out}: {os.strerror(code)} ({errors.free_space(parent)} "
        f"in {parent}). Nothing was left behind and {out} is as it was. {fix}, or choose "
        "another --out (--config.dataset.raw_dir for a run)."
    )


def _check_new_or_empty(out: str) -> None:
    if os.path.lexists(out) and not os.path.isdir(out):
        raise SyntheticFolderError(
            f"synthetic MARS: {out} exists and is not a folder. Nothing was deleted. Choose "
            "another --out (--config.dataset.raw_dir for a run), or move that file away."
        )
    if os.path.isdir(out) and os.listdir(out):
        found = sorted(_all_files(out)) + sorted(_empty_folders(out))
        raise _refuse(out, "exists and is not empty", found or sorted(os.listdir(out)))


def _move_entries(source: str, target: str) -> None:
    """Moves what `source` holds into the folder `target`, the marker file last."""
    names = sorted(name for name in os.listdir(source) if name != MARKER_FILE)
    for name in [*names, MARKER_FILE]:
        os.rename(os.path.join(source, name), os.path.join(target, name))


@contextlib.contextmanager
def _partial_folder(out: str) -> Iterator[str]:
    """A new folder of the generator's own beside `out` to write into, removed afterwards
    (what was moved into place is gone from it); an OS error while writing becomes one
    `_write_error` message naming `out` and its free space."""
    partial = None
    try:
        partial = _own_folder(out, "partial")
        yield partial
    except OSError as error:
        if isinstance(error, UserError):
            raise
        if partial is not None:
            _remove_own(partial)  # First, so the message counts the space it held as free.
        fault = _write_error(out, error)
        if fault is None:
            raise
        raise fault from error
    finally:
        if partial is not None:
            _remove_own(partial)


def generate(out: str, config: SyntheticConfig = SyntheticConfig()) -> dict[str, int]:
    """Writes the synthetic dataset to the new (or empty) folder `out`; returns its statistics.

    Files are written to a new folder `<out>.partial-<random>` first and moved into place at
    the end, so an interrupted run never leaves a half-written `out` behind. An existing
    empty `out` is kept (filled, not replaced); no other folder is touched.
    """
    config.validate()
    _check_new_or_empty(out)
    with _partial_folder(out) as partial:
        stats = _write_dataset(partial, config)
        _check_new_or_empty(out)  # Again: nothing appeared meanwhile.
        if os.path.isdir(out):
            _move_entries(partial, out)
        else:
            os.rename(partial, out)
    return stats


def replace(out: str, config: SyntheticConfig) -> dict[str, int]:
    """Regenerates `out` with `config` if it holds only the generator's untouched output
    (`psta-synthetic --overwrite`; a run never calls it).

    Otherwise raises `SyntheticFolderError` naming the other files, and deletes nothing. The
    new dataset is written to a new folder beside `out` and swapped in; the old one is
    deleted only if it is still the generator's untouched output. The old dataset is lost
    only in appearance: the same config and seed rewrite it byte for byte.
    """
    config.validate()
    if not os.path.isdir(out) or not os.listdir(out):
        return generate(out, config)
    if not os.path.isfile(os.path.join(out, MARKER_FILE)):
        raise _refuse(out, "was not written by the generator", foreign_files(out))
    foreign = foreign_files(out)
    if foreign:
        difference = _config_difference(out, config)
        raise _refuse(out, f"holds a synthetic dataset ({difference})", foreign)
    previous = None
    with _partial_folder(out) as partial:
        stats = _write_dataset(partial, config)
        previous = _own_folder(out, "previous")
        try:
            os.rename(out, previous)  # Onto the empty folder just created.
        except BaseException:
            os.rmdir(previous)
            previous = None
            raise
        try:
            os.rename(partial, out)
        except BaseException:
            os.rename(previous, out)  # Put the old dataset back.
            previous = None
            raise
    left = foreign_files(previous)
    if left:  # Changed while the new one was written: kept.
        logging.warning(
            "synthetic MARS: the previous dataset of %s changed while it was replaced (%s); "
            "it is kept at %s",
            out,
            _listed(left),
            previous,
        )
    else:
        shutil.rmtree(previous)
    return stats


def _write_dataset(out: str, config: SyntheticConfig) -> dict[str, int]:
    rng = np.random.default_rng(config.seed)
    styles = camera_styles(config.num_cameras, rng, config.camera_variation)
    pids = rng.choice(
        np.arange(1, _MAX_PID + 1), config.num_train_ids + config.num_test_ids, replace=False
    )
    train_pids = sorted(int(p) for p in pids[: config.num_train_ids])
    test_pids = sorted(int(p) for p in pids[config.num_train_ids :])
    unmatched = set(rng.choice(test_pids, config.num_unmatched_ids, replace=False).tolist())

    train_specs = [
        s for pid in train_pids for s in _identity_tracklets(pid, config, rng, matched_test=False)
    ]
    cameras = np.arange(1, config.num_cameras + 1)
    test_specs = _numbered_singletons(
        -1, rng.choice(cameras, config.num_junk_tracklets), config, rng
    )
    test_specs += _numbered_singletons(
        0, rng.choice(cameras, config.num_distractor_tracklets), config, rng
    )
    for pid in test_pids:
        if pid in unmatched:  # Seen once in each of two cameras: both tracklets are queries.
            pair = [(int(c), 1) for c in rng.choice(cameras, 2, replace=False)]
            test_specs += _tracklets_of(pid, random_appearance(rng), pair, config, rng)
        else:
            test_specs += _identity_tracklets(pid, config, rng, matched_test=True)

    train_info = _write_split(out, "bbox_train", train_specs, styles, config, rng)
    test_info = _write_split(out, "bbox_test", test_specs, styles, config, rng)
    query_rows = _query_rows(test_specs, rng)
    layout.write_info(out, train_info, test_info, query_rows)

    stats = {
        "train_tracklets": len(train_specs),
        "test_tracklets": len(test_specs),
        "query_tracklets": int(query_rows.size),
        "train_frames": sum(spec.num_frames for spec in train_specs),
        "test_frames": sum(spec.num_frames for spec in test_specs),
    }
    marker = {"config": dataclasses.asdict(config), "stats": stats, "files": _all_files(out)}
    with open(os.path.join(out, MARKER_FILE), "w") as f:
        json.dump(marker, f, indent=2, sort_keys=True)
    return stats


def ensure(out: str, config: SyntheticConfig = SyntheticConfig()) -> bool:
    """Generates `out` when it is missing or empty; returns True if it wrote.

    A folder generated with this exact config is used as it is (returns False). A run never
    regenerates, replaces or deletes a dataset folder: one generated with another config
    stops with `SyntheticConfigMismatchError` (the folder, the difference and the ways out),
    and a non-empty folder the generator did not write with `SyntheticFolderError`. Only the
    explicit command (`psta-synthetic --overwrite`, `replace`) replaces a synthetic dataset.
    """
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
        logging.info("synthetic MARS: generating %s (once)", out)
        stats = generate(out, config)
        logging.info("synthetic MARS: wrote %s", stats)
        return True
    if not os.path.isfile(os.path.join(out, MARKER_FILE)):
        _check_new_or_empty(out)  # Raises: not a folder, or files the generator did not write.
    if _recorded_config(out) == dataclasses.asdict(config):
        return False
    raise _mismatch(out, config)


_FLAG_DEFINERS = {int: flags.DEFINE_integer, float: flags.DEFINE_float}


def _define_flags(values: flags.FlagValues, argv: Sequence[str]) -> None:
    del argv
    flags.DEFINE_string(
        "out",
        None,
        "The output folder, e.g. data/synthetic_mars.",
        flag_values=values,
        required=True,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace an earlier synthetic dataset at --out (only if it holds nothing but the "
        "generator's untouched output).",
        flag_values=values,
    )
    defaults = SyntheticConfig()
    for field in dataclasses.fields(SyntheticConfig):
        default = getattr(defaults, field.name)
        _FLAG_DEFINERS[type(default)](
            field.name, default, f"SyntheticConfig.{field.name}.", flag_values=values
        )


def _run(values: flags.FlagValues) -> dict[str, int]:
    config = SyntheticConfig(
        **{field.name: values[field.name].value for field in dataclasses.fields(SyntheticConfig)}
    )
    try:
        config.validate()
    except ValueError as error:
        raise errors.ConfigError(str(error)) from None
    if values.overwrite:
        stats = replace(values.out, config)
    else:
        stats = generate(values.out, config)
    print(f"wrote synthetic MARS to {values.out}: {stats}")
    return stats


main = cli.Command(
    name="psta-synthetic",
    summary="Write a synthetic video re-ID dataset in MARS's raw layout.",
    define_flags=_define_flags,
    run=_run,
    uses_jax=False,
    uses_tensorflow=False,
)

if __name__ == "__main__":
    main.entry()
