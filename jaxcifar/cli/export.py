"""`python -m jaxcifar.export`: the command line of jaxcifar/export.py."""

from __future__ import annotations

import argparse
import pathlib
import sys
from jaxcifar.cli import reports_user_errors
from jaxcifar.runs import add_run_arguments, load_run
from jaxcifar.export import PLATFORMS, SAVED_MODEL_DIR, SERVING_FILE, STABLEHLO_FILE, export_run, parse_platforms


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained run as StableHLO (jax.export) and/or a TF SavedModel (jax2tf); "
                    "input uint8 (b, S, S, 3) RGB with S the run's data.image_size (32 for the CIFAR "
                    "recipes), output float32 logits, any batch size.")
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    parser.add_argument("--format", choices=("stablehlo", "savedmodel", "both"), default="both",
                        help="what to write (default both; both still writes StableHLO without TensorFlow)")
    parser.add_argument("--platforms", type=parse_platforms, default=PLATFORMS,
                        help=f"comma-separated platforms to lower for (default {','.join(PLATFORMS)})")
    args = parser.parse_args(argv)
    run = load_run(args.workdir, args.checkpoint)
    tta = run.resolve_tta(args.tta)
    written, skipped = export_run(run, args.out, args.format, tta, args.platforms)
    paths = {"stablehlo": args.out / STABLEHLO_FILE, "savedmodel": args.out / SAVED_MODEL_DIR}
    for fmt in written:
        print(f"wrote {fmt}: {paths[fmt]}")
    print(f"wrote {args.out / SERVING_FILE} (step {run.step}, tta {'on' if tta else 'off'}, "
          f"platforms {','.join(args.platforms)})")
    if skipped:
        print(f"warning: SavedModel NOT written, only the StableHLO artefact: {skipped}", file=sys.stderr)
        return 1
    return 0
