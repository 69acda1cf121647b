"""`python -m jaxcifar.select_labels`: the command line of jaxcifar/select_labels.py."""

from __future__ import annotations

import argparse
import pathlib
from jaxcifar.cli import reports_user_errors
from jaxcifar import select_labels
from jaxcifar.select_labels import CSV, SHEET, select_run


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcifar.select_labels", description=select_labels.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a self-supervised run (its backbone embeds the images)")
    parser.add_argument("--budget", type=int, required=True, help="how many images to propose for labelling")
    parser.add_argument("--out", required=True, help=f"directory for {CSV} and {SHEET}")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, then TFDS's own)")
    parser.add_argument("--seed", type=int, default=0, help="k-means initialisation")
    parser.add_argument("--neighbours", type=int, default=20, help="neighbours in the typicality (TypiClust: 20)")
    args = parser.parse_args(argv)
    rows = select_run(args.workdir, args.budget, args.out, args.data_dir, args.seed, args.neighbours)
    out = pathlib.Path(args.out)
    print(f"proposed {len(rows)} images to label: fill in the label column of {out / CSV} (contact sheet: "
          f"{out / SHEET}), then train with --config.data.labels_csv={out / CSV}")
    return 0
