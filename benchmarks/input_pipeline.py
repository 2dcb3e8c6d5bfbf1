"""Training input pipeline throughput against decoding the same JPEGs alone.

Synthetic in-memory split with MARS-like frames (smooth images, JPEG quality 95), P x K
batches of T-frame clips at the configured size. The measurements run in this process,
interleaved (best of --repeats each, so a shared machine's drift hits both), with the same
parallelism and the same frames:

  pipeline:     input.pipeline.TrainBatches as training runs it (plan, gather, decode,
                resize; flip, normalisation and erasing are left to the device)
  decode only:  tf.data map of tf.io.decode_jpeg over the frames the pipeline samples, one
                element per clip (as the pipeline), batched

Each iterator is closed after its measurement, so its background threads cannot bill CPU
time to the next one. Goal: uint8 clips at >= 0.9x the decode-only rate.

Usage: python benchmarks/input_pipeline.py [--source_size=128,64] [--steps=40]
"""

import gc
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from psta_jax import datasets
from psta_jax.input import pipeline, preprocess

FLAGS = flags.FLAGS
flags.DEFINE_list("source_size", ["256", "128"], "stored frame (H, W); MARS frames are 256x128")
flags.DEFINE_list("image_size", ["256", "128"], "clip (H, W)")
flags.DEFINE_integer("seq_len", 8, "frames per clip (T)")
flags.DEFINE_integer("identities", 8, "P")
flags.DEFINE_integer("instances", 4, "K")
flags.DEFINE_integer("steps", 40, "timed batches")
flags.DEFINE_integer("warmup", 5, "untimed batches first")
flags.DEFINE_integer("num_parallel_calls", -1, "tf.data parallelism (-1: AUTOTUNE)")
flags.DEFINE_string("sampler", "rrs", "training frame sampler")
flags.DEFINE_integer("repeats", 3, "interleaved repetitions of each measurement")


def synthetic_split(
    source_size, num_ids=64, tracklets_per_id=4, frames_per_tracklet=60, distinct_images=256, seed=0
) -> tuple[datasets.TrackletStore, float]:
    """A split whose frames reuse ``distinct_images`` smooth JPEGs (the decode cost is real).

    Returns the store and the mean JPEG size in bytes.
    """
    rng = np.random.default_rng(seed)
    height, width = source_size
    coarse = rng.uniform(0, 255, (distinct_images, height // 8, width // 8, 3)).astype(np.float32)
    images = tf.cast(tf.image.resize(coarse, source_size, "bicubic"), tf.uint8)
    images = tf.clip_by_value(images + tf.cast(rng.integers(0, 12, images.shape), tf.uint8), 0, 255)
    encoded = np.array([tf.io.encode_jpeg(im, quality=95).numpy() for im in images], object)
    num_tracklets = num_ids * tracklets_per_id
    frames = encoded[rng.integers(0, distinct_images, num_tracklets * frames_per_tracklet)]
    return datasets.TrackletStore(
        frames=tf.constant(frames),
        offsets=np.arange(num_tracklets + 1, dtype=np.int64) * frames_per_tracklet,
        pids=np.repeat(np.arange(num_ids), tracklets_per_id).astype(np.int64),
        camids=np.tile(np.arange(tracklets_per_id), num_ids).astype(np.int64),
        tracklet_ids=np.arange(num_tracklets, dtype=np.int64),
    ), float(np.mean([len(e) for e in encoded]))


def time_batches(make_iterator, warmup: int, steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) for ``steps`` batches of a fresh
    iterator, which is closed before returning: its background threads stop and cannot
    bill their CPU time to the next measurement."""
    iterator = make_iterator()
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(iterator)
    result = time.perf_counter() - wall, time.process_time() - cpu
    del iterator
    gc.collect()
    time.sleep(0.5)  # let cancelled tf.data threads wind down
    return result


def decode_only(
    store: datasets.TrackletStore,
    frame_ids: np.ndarray,
    clips_per_batch: int,
    num_parallel_calls: int,
):
    """The same frames decoded by the same tf.data structure (one map element per clip of
    T frames, its fastest form here), nothing else. frame_ids: (clips, T)."""
    frames = store.frames
    seq_len = frame_ids.shape[1]

    def decode_clip(ids):
        return tf.stack(
            [
                tf.io.decode_jpeg(
                    tf.gather(frames, ids[t]), channels=3, dct_method="INTEGER_ACCURATE"
                )
                for t in range(seq_len)
            ]
        )

    dataset = (
        tf.data.Dataset.from_tensor_slices(frame_ids)
        .map(decode_clip, num_parallel_calls=num_parallel_calls, deterministic=True)
        .batch(clips_per_batch, drop_remainder=True)
        .prefetch(2)
    )
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options).as_numpy_iterator()


def main(argv):
    del argv
    source_size = tuple(int(v) for v in FLAGS.source_size)
    image_size = tuple(int(v) for v in FLAGS.image_size)
    store, jpeg_bytes = synthetic_split(source_size)
    config = preprocess.TrainPipelineConfig(
        identities_per_batch=FLAGS.identities,
        instances_per_identity=FLAGS.instances,
        seq_len=FLAGS.seq_len,
        image_size=image_size,
        sampler=FLAGS.sampler,
        num_parallel_calls=FLAGS.num_parallel_calls,
    )
    batch, total = config.global_batch_size, FLAGS.warmup + FLAGS.steps
    data = pipeline.TrainBatches(store, config, seed=0)
    plans = [data.plan(s) for s in range(total)]
    frame_ids = np.concatenate([store.offsets[p["tracklets"], None] + p["frames"] for p in plans])

    runs = {
        "pipeline": data.iterator,
        "decode only": lambda: decode_only(store, frame_ids, batch, FLAGS.num_parallel_calls),
    }
    best = {name: (np.inf, np.inf) for name in runs}
    for _ in range(FLAGS.repeats):  # interleaved; the best wall time of each is kept
        for name, make in runs.items():
            best[name] = min(best[name], time_batches(make, FLAGS.warmup, FLAGS.steps))

    clips = FLAGS.steps * batch
    print(
        f"frames {source_size[0]}x{source_size[1]} JPEG (~{jpeg_bytes / 1024:.1f} KiB) -> "
        f"clips {image_size[0]}x{image_size[1]}, T={config.seq_len}, batch {batch}, "
        f"{FLAGS.steps} batches x best of {FLAGS.repeats}, "
        f"num_parallel_calls={FLAGS.num_parallel_calls}, host CPUs: "
        f"{len(os.sched_getaffinity(0))}"
    )
    decode_wall, decode_cpu = best["decode only"]
    for name, (wall, cpu) in best.items():
        print(
            f"{name:24s} {clips / wall:8.1f} clips/s  {wall / FLAGS.steps * 1e3:7.1f} ms/batch  "
            f"{cpu / FLAGS.steps * 1e3:7.1f} CPU-ms/batch   vs decode: throughput "
            f"{decode_wall / wall:.2f}, CPU {cpu / decode_cpu:.2f}x"
        )


if __name__ == "__main__":
    app.run(main)
