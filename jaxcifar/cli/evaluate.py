"""`python -m jaxcifar.evaluate`: the command line of jaxcifar/evaluate.py."""

from __future__ import annotations

import argparse
import pathlib
from jaxcifar.cli import reports_user_errors
from jaxcifar.runs import add_run_arguments
from jaxcifar.evaluate import REPORT, evaluate_workdir, summary_text


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Accuracy, per-class metrics, confusion matrix and plots of a trained run, "
                    "written to WORKDIR/eval/SPLIT/ (or --out DIR).")
    add_run_arguments(parser)
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, then TFDS's own)")
    parser.add_argument("--split", default=None,
                        help="split to evaluate: a TFDS split, e.g. test or 'test[:500]', or a subfolder of the run's "
                             "data.image_folder (default: the split the run evaluated on)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="folder for report.json and the plots (default: WORKDIR/eval/SPLIT/, "
                             "SPLIT with characters other than letters, digits and +-_ replaced by _)")
    args = parser.parse_args(argv)
    report, paths = evaluate_workdir(args.workdir, args.checkpoint, args.tta, args.split, args.data_dir, out=args.out)
    print(summary_text(report))
    print(f"wrote {', '.join(paths)} to {paths[REPORT].parent}")
    return 0
