"""Command line: export a trained checkpoint's embedding function for serving.

    python -m psta_jax.export --checkpoint CKPT --out DIR [--platforms cpu,cuda,tpu]

writes DIR/embed.jax_exported (jax.export, symbolic batch; load with
`jax.export.deserialize`, no psta_jax needed), DIR/saved_model/ (TensorFlow SavedModel via
jax2tf native serialization, signature `serving_default`: uint8 `clips` (B, T, H, W, 3) ->
float32 `embeddings` (B, D); TensorFlow alone loads it, as TF Serving does) and
DIR/export.json (shapes, platforms, the checkpoint's identity). See
psta_jax.serving.export_artifacts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from psta_jax import errors, xla_cpu

# psta_jax.serving's export_artifacts and trained_model import JAX and TensorFlow: each
# function below imports them, so that main() sets up the CPU before their threads start.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from psta_jax.serving import export_artifacts  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m psta_jax.export",
        description="Export a PSTA checkpoint's embedding function (jax.export + SavedModel).")
    parser.add_argument("--checkpoint", required=True,
                        help="workdir, checkpoints/ folder, step folder or converted checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--platforms", default=",".join(export_artifacts.PLATFORMS),
                        help="comma-separated subset of cpu,cuda,tpu (default: all three)")
    parser.add_argument("--normalise", action="store_true",
                        help="L2-normalise each clip's embedding inside the exported function")
    parser.add_argument("--no-saved-model", action="store_true",
                        help="write only the jax.export artifact")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an expected error")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from psta_jax.serving import export_artifacts, trained_model  # noqa: PLC0415

    platforms = export_artifacts.check_platforms(
        [p.strip() for p in args.platforms.split(",") if p.strip()])
    model = trained_model.load(args.checkpoint)
    written = export_artifacts.export(model, args.out, platforms=platforms,
                                      l2_normalise=args.normalise,
                                      saved_model=not args.no_saved_model)
    for path in written.values():
        print(f"wrote {path}")
    return written


def main(argv: Sequence[str] | None = None) -> dict:
    xla_cpu.configure_for_cpu_if_needed()  # before JAX and TensorFlow start their threads
    args = _parse_args(argv)
    return errors.run_cli(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])
