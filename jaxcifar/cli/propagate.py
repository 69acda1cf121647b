"""`python -m jaxcifar.propagate`: the command line of jaxcifar/propagate.py."""

from __future__ import annotations

import argparse
import json
from jaxcifar import config as config_lib
from jaxcifar import targets
from jaxcifar.cli import reports_user_errors
from jaxcifar.runs import read_config
from jaxcifar import propagate
from jaxcifar.propagate import REPORT, propagate_run


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcifar.propagate", description=propagate.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a self-supervised run, or a classifier trained on this budget (its backbone embeds the images)")
    parser.add_argument("--out", required=True, help=f"directory for {targets.TARGETS} and {REPORT}")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, then TFDS's own)")
    parser.add_argument("--k", type=int, default=20, help="neighbours of each image in the graph (Iscen et al.: 50)")
    parser.add_argument("--alpha", type=float, default=0.99, help="diffusion strength in (0, 1)")
    parser.add_argument("--gamma", type=float, default=3.0, help="affinity = similarity ** gamma")
    args, rest = parser.parse_known_args(argv)
    config = read_config(args.workdir)  # the SSL run's data, with this run's budget on top
    for item in rest:
        key, _, value = item.removeprefix("--config.").partition("=")
        if not item.startswith("--config.data.") or not value:
            parser.error(f"unrecognised argument {item!r}: only --config.data.FIELD=VALUE overrides are taken")
        config_lib.override(config, key, value)
    config_lib.validate(config, 1)
    if not 0 < args.alpha < 1 or args.k < 1:
        parser.error(f"--alpha={args.alpha} must be in (0, 1) and --k={args.k} at least 1.")
    report = propagate_run(args.workdir, args.out, config, args.data_dir, args.k, args.alpha, args.gamma)
    print(json.dumps({k: v for k, v in report.items() if k != "budget"}, indent=2))
    return 0
