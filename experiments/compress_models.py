"""Smaller models from trained ones, against float32: int8 (python -m jaxcifar.quantize) and
global magnitude pruning (prune.sparsity).

int8: accuracy on `test` and `test_jpeg`, artefact size, and CPU latency (batch 1) and
throughput (batch 256) of the float32 and int8 StableHLO exports, timed side by side.

Pruning: each of --sparsities, reached by fine-tuning the trained run (`--init_from`) with
`prune.sparsity` for --prune_epochs epochs at a tenth of its recipe's learning rate (the
cubic ramp over the first half). Recorded: accuracy, the measured sparsity, and the gzip
size of the float32 export (zeros compress; a dense kernel computes them all the same, so
unstructured sparsity brings no speed-up on a CPU and none is claimed).

Models, each a workdir:
  simple_cnn  trained here if absent: `--config simple_cnn --config.epochs=SIMPLE_CNN_EPOCHS`;
  transfer    the split-CIFAR ResNet-18 (width 16) fine-tuned in full, from
              experiments/efficient_finetune.py (`split_full_0`), evaluated on classes 5-9;
  airbench    the half-width airbench fine-tuned on the SimCLR backbone with 100 labels per
              class, from experiments/ssl_label_efficiency.py (`finetune_100_0`);
  fast        a `fast` run's workdir, when --fast_workdir is given (this script does not train
              one: a full `fast` run takes about an hour on a 2-core CPU).
A model whose workdir is missing is recorded as such, not silently dropped.

    python experiments/compress_models.py --data_dir ../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import time

from common import write_result

from jaxcifar import config as config_lib
from jaxcifar import export, quantize, runs, train


# The fast recipe evaluates with 6-view TTA, and its int8 export runs at about 2 images/s on a
# 2-core CPU (benchmarks/int8_ops.py: XLA:CPU routes int8 convolutions to its slow generic
# path), so int8 on the 10,000 test_jpeg images would take about 1.5 hours. It is measured
# on `test` only; pruning still reports test_jpeg, since the pruned models run in float32.
INT8_EXTRA_SPLITS = {"fast": ()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/compress")
    parser.add_argument("--simple_cnn_epochs", type=int, default=3)
    parser.add_argument("--transfer_workdir", default="runs/efficient_finetune/split_full_0")
    parser.add_argument("--airbench_workdir", default="runs/ssl_label_efficiency/finetune_100_0")
    parser.add_argument("--fast_workdir", default=None)
    parser.add_argument("--calibration_images", type=int, default=1000)
    parser.add_argument("--timing_repeats", type=int, default=10)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--fast_sparsities", type=float, nargs="*", default=[0.75],
                        help="the fast net's sparsities: each costs about 15 minutes of fine-tuning on a 2-core "
                             "CPU, so by default only the 75%% of the issue's target")
    parser.add_argument("--prune_epochs", type=int, default=2, help="pruning fine-tune epochs of simple_cnn "
                                                                   "(5x as many for the 500-image transfer task)")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    start = time.time()

    simple_cnn = config_lib.load_recipe("simple_cnn")
    simple_cnn.epochs = args.simple_cnn_epochs
    train.fit(simple_cnn, out / "simple_cnn", data_dir=args.data_dir)
    workdirs = {"simple_cnn": out / "simple_cnn", "transfer": pathlib.Path(args.transfer_workdir),
                "airbench": pathlib.Path(args.airbench_workdir),
                "fast": pathlib.Path(args.fast_workdir) if args.fast_workdir else None}
    results = {}
    for name, workdir in workdirs.items():
        if workdir is None or not (workdir / "checkpoints").is_dir():
            results[name] = {"measured": False, "workdir": None if workdir is None else str(workdir)}
            continue
        done = out / f"{name}_int8" / quantize.REPORT  # a rerun (e.g. adding --fast_workdir) reuses it
        report = json.loads(done.read_text()) if done.exists() else quantize.quantize_workdir(
            workdir, out / f"{name}_int8", data_dir=args.data_dir, calibration_images=args.calibration_images,
            timing_repeats=args.timing_repeats, extra_splits=INT8_EXTRA_SPLITS.get(name, ("test_jpeg",)), full=True)
        results[name] = {"measured": True, **report}
        splits = {split: row for split, row in report.items() if isinstance(row, dict) and "int8_accuracy" in row}
        print(f"{name}: " + ", ".join(f"{split} float32 {row['float32_accuracy']:.4f} int8 {row['int8_accuracy']:.4f}"
                                      for split, row in splits.items()), flush=True)

    pruned = {}
    for name, epochs, sparsities in (("simple_cnn", args.prune_epochs, args.sparsities),
                                     ("transfer", 5 * args.prune_epochs, args.sparsities),
                                     ("fast", args.prune_epochs, args.fast_sparsities)):
        if not results[name]["measured"]:
            continue
        for sparsity in sparsities:
            config = runs.read_config(workdirs[name])
            # Lookahead and EMA (the `fast` recipe's lookahead) are off: pruning refuses them.
            config_lib.apply_dict(config, {"epochs": epochs, "lr": config.lr / 10, "warmup_epochs": 0.0,
                                           "stages": (), "prune": {"sparsity": sparsity}, "log_every_steps": 10,
                                           "lookahead_every": 0, "ema_decay": 0.0,
                                           "data": {"extra_eval_splits": ("test_jpeg",)}})
            config.group_epochs = config_lib.ml_collections.ConfigDict()  # a recipe's first-epochs-only groups train throughout
            workdir = out / f"{name}_pruned_{sparsity}"
            summary = train.fit(config, workdir, data_dir=args.data_dir, init_from=str(workdirs[name]))
            # The final weights, at the target sparsity: `best` may be an epoch of the ramp.
            export.export_run(runs.load_run(workdir, "latest"), workdir / "export", fmt="stablehlo",
                              platforms=("cpu",))
            pruned.setdefault(name, []).append({
                "target_sparsity": sparsity, "sparsity": summary["sparsity"], "epochs": epochs, "lr": config.lr,
                "test_accuracy": summary["test_accuracy"],
                "test_jpeg_accuracy": summary["extra_eval_accuracy"]["test_jpeg"],
                "export_gzip_bytes": gzip_size(workdir / "export" / export.STABLEHLO_FILE)})
            print(f"{name} pruned to {summary['sparsity']:.3f}: test {summary['test_accuracy']:.4f}", flush=True)
        dense = out / f"{name}_int8" / "float32" / export.STABLEHLO_FILE
        results[name]["float32_export_gzip_bytes"] = gzip_size(dense)

    write_result("compress_models", {"simple_cnn_epochs": args.simple_cnn_epochs,
                                     "calibration_images": args.calibration_images, "models": results,
                                     "pruned": pruned, "wall_seconds": time.time() - start})


def gzip_size(path: pathlib.Path) -> int:
    return len(gzip.compress(path.read_bytes()))


if __name__ == "__main__":
    main()
