"""Structured pruning (prune.channels) of the split-CIFAR transfer model: accuracy and CPU
speed against the fraction of the basic blocks' inner channels removed.

The base is the width-16 ResNet-18 fine-tuned in full on classes 5-9 from 100 labels per
class (experiments/efficient_finetune.py's `split_full_0`). Each fraction, 0 included as
the control (the same fine-tuning with nothing removed), fine-tunes the narrowed network
from the kept weights for --epochs epochs at the base's fine-tuning rate (0.01, cosine).
Speed: the float32 StableHLO exports of all of them, timed in turns in this process
(batch 1 latency and batch 256 throughput), so the ratios are measured side by side.

    python experiments/channel_pruning.py --data_dir ../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import pathlib
import time

from common import write_result

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import export, optim, quantize_report, runs, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--base", default="runs/efficient_finetune/split_full_0")
    parser.add_argument("--out_dir", default="runs/channel_pruning")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--timing_repeats", type=int, default=10)
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    start = time.time()

    rows, artefacts = {}, {}
    for fraction in args.fractions:
        config = runs.read_config(args.base)
        config_lib.apply_dict(config, {"epochs": args.epochs, "lr": args.lr, "warmup_epochs": 0.0, "stages": (),
                                       "prune": {"channels": fraction}})
        workdir = out / f"channels_{fraction}"
        summary = train.fit(config, workdir, data_dir=args.data_dir, init_from=args.base)
        run = runs.load_run(workdir)
        export.export_run(run, workdir / "export", fmt="stablehlo", platforms=("cpu",))
        artefacts[str(fraction)] = workdir / "export" / export.STABLEHLO_FILE
        rows[str(fraction)] = {"test_accuracy": summary["test_accuracy"],
                               "test_jpeg_accuracy": summary["extra_eval_accuracy"]["test_jpeg"],
                               "parameters": optim.count_parameters(run.variables["params"]),
                               "block_widths": run.config.model_kwargs.get("block_widths"),
                               "export_bytes": artefacts[str(fraction)].stat().st_size}
        print(f"channels removed {fraction}: test {summary['test_accuracy']:.4f}", flush=True)
    images = data_lib.load_data(runs.read_config(args.base), args.data_dir).eval.images
    speed = quantize_report.time_artefacts({1: artefacts, 256: artefacts}, images, args.timing_repeats)
    for fraction, row in rows.items():
        row["latency"] = speed[fraction]
    write_result("channel_pruning", {"base": args.base, "epochs": args.epochs, "lr": args.lr,
                                     "eval": "test classes 5-9 (515 exact images); test_jpeg: their 5,000 JPEG copies",
                                     "fractions": rows, "wall_seconds": time.time() - start})


if __name__ == "__main__":
    main()
