"""Embedding speed of `python -m psta_jax.embed` on this machine: a folder of JPEG tracklets in,
tracklet embeddings out, through the same code (folder scan and frame check, the eval input
pipeline with the checkpoint's test sampler, the jitted model on all devices, clip averaging).

    python benchmarks/embed.py [--model demo|full] [--tracklets N] [--frames F]
        [--batch_size B]

`demo`: the demo's network (ResNet-18 width 8, 64x32, T=8, feature 128; configs/demo.py);
`full`: the paper's (ResNet-50, 256x128, T=8; configs/mars.py). Random weights, saved as a
checkpoint first (speed does not depend on the values). Frames are noise JPEGs at the model's
image size, so nothing is resized. Prints clips/s after the first batch (which compiles the
model) and over the whole run, with the load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile

from psta_jax.runtime import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = {"demo": ("configs/demo.py", 64), "full": ("configs/mars.py", 625)}


def load_config(model: str):
    path, num_classes = MODELS[model]
    spec = importlib.util.spec_from_file_location("bench_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(), num_classes


def write_checkpoint(config, num_classes: int, workdir: pathlib.Path) -> None:
    from flax import nnx

    from psta_jax.models import build_model
    from psta_jax.models.random_weights import random_model
    from psta_jax.runtime import checkpointing
    from psta_jax.runtime import workdir as workdir_lib
    from psta_jax.training import steps

    model_config = config.model.to_dict()
    model = random_model(lambda: build_model(model_config, num_classes, nnx.Rngs(0)))
    _, params, model_state = steps.split_model(model)
    with checkpointing.Checkpoints(workdir, async_save=False) as manager:
        manager.save(0, {"model": {"params": params, "model_state": model_state}})
    workdir_lib.write_run_config(workdir, config, num_classes)


def write_tracklets(root: pathlib.Path, count: int, frames: int, size) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for t in range(count):
        folder = root / f"{t % 100}_{t % 6}_{t:05d}"
        folder.mkdir(parents=True)
        for f in range(frames):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{f:03d}.jpg", quality=90)


def main(argv=None) -> None:
    xla_cpu.configure_for_cpu_if_needed()  # before JAX starts its backends
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument(
        "--tracklets", type=int, default=None, help="default: 8 batches (demo), 3 batches (full)"
    )
    parser.add_argument("--frames", type=int, default=24, help="frames per tracklet")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="clips per batch (default: the config's eval batch)",
    )
    args = parser.parse_args(argv)

    import jax

    from psta_jax.runtime import cli
    from psta_jax.serving import embedder, tracklets
    from psta_jax.training import trained_model

    cli.keep_tensorflow_on_host(show_everything=False)
    config, num_classes = load_config(args.model)
    batch = args.batch_size or config.input.eval_batch_size
    count = args.tracklets or batch * (8 if args.model == "demo" else 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write_checkpoint(config, num_classes, tmp / "ckpt")
        write_tracklets(tmp / "tracklets", count, args.frames, tuple(config.model.image_size))
        model = trained_model.load_trained_model(tmp / "ckpt")
        # embed_folder's steps, keeping the throughput it reports.
        store = tracklets.read_store(tracklets.scan_folder(tmp / "tracklets"))
        features, throughput = embedder.embed_store(
            model, store, batch_size=batch, show_progress=False
        )
        assert features.shape == (count, config.model.feature_dim)
    load = os.getloadavg()
    print(
        f"embed, {args.model} model ({config.model.depth}-layer ResNet width "
        f"{config.model.width}, {tuple(config.model.image_size)}, T={config.model.seq_len}, "
        f"test sampler {config.input.test_sampler}), {count} tracklets of {args.frames} "
        f"JPEG frames, batch {batch}, {jax.device_count()} {jax.default_backend()} device(s)"
    )
    print(
        f"  steady: {throughput.steady_clips_per_second:.1f} clips/s "
        f"({throughput.steady_clips} clips after the first batch)"
    )
    print(f"  whole run incl. compilation: {throughput.clips_per_second:.1f} clips/s")
    print(f"  load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main(sys.argv[1:])
