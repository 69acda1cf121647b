"""`python -m jaxcifar.quantize`: the command line of jaxcifar/quantize.py."""

from __future__ import annotations

import argparse
import pathlib
import sys

from jaxcifar import quantize
from jaxcifar.cli import reports_user_errors, shows_progress
from jaxcifar.quantize import ARTEFACTS, REPORT, quantize_workdir
from jaxcifar.quantize_report import fastest_lines, tradeoff_table
from jaxcifar.runs import add_run_arguments


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcifar.quantize", description=quantize.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for report.json and the float32/, int8/, litert_float32/ and litert_int8/ artefacts")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, then TFDS's own)")
    parser.add_argument("--calibration_images", type=int, default=quantize.CALIBRATION_IMAGES,
                        help="training images that calibrate the activation ranges (the LiteRT conversion's time "
                             "grows with them)")
    parser.add_argument("--extra_splits", default="",
                        help="comma-separated splits evaluated besides the run's eval split, e.g. test_jpeg (its "
                             "10,000 JPEG copies: the robustness check, a minute or more per model on a CPU)")
    parser.add_argument("--timing_repeats", type=int, default=quantize.TIMING_REPEATS,
                        help="timed calls per artefact and batch size")
    parser.add_argument("--full", action="store_true",
                        help="on a CPU, also evaluate the Qwix int8 model and time it at batch 256 (minutes: XLA:CPU "
                             "has no fast int8 convolution)")
    args = parser.parse_args(argv)
    if args.calibration_images < 1:
        parser.error(f"--calibration_images={args.calibration_images} must be at least 1.")
    with shows_progress():
        report = quantize_workdir(args.workdir, args.out, args.checkpoint, args.data_dir, args.calibration_images,
                                  tuple(s for s in args.extra_splits.split(",") if s), args.timing_repeats,
                                  tta=args.tta, full=args.full)
    print(tradeoff_table(report))
    print(fastest_lines(report))
    print(f"report: {pathlib.Path(args.out) / REPORT}")
    for label, reason in report["failed"].items():
        print(f"error: {ARTEFACTS[label]} was not published: {reason}", file=sys.stderr)
    return 1 if report["failed"] else 0
