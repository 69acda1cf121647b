"""float32 against int8 (python -m jaxcifar.quantize) for trained models: accuracy on `test`
and `test_jpeg`, artefact size, and CPU latency (batch 1) and throughput (batch 256) of the
two StableHLO exports, timed side by side.

Models, each a workdir:
  simple_cnn  trained here if absent: `--config simple_cnn --config.epochs=SIMPLE_CNN_EPOCHS`;
  transfer    the split-CIFAR ResNet-18 (width 16) fine-tuned in full, from
              experiments/efficient_finetune.py (`split_full_0`), evaluated on classes 5-9;
  airbench    the half-width airbench fine-tuned on the SimCLR backbone with 100 labels per
              class, from experiments/ssl_label_efficiency.py (`finetune_100_0`);
  fast        a `fast` run's workdir, when --fast_workdir is given.
A model whose workdir is missing is recorded as such, not silently dropped.

    python experiments/compress_models.py --data_dir ../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import pathlib
import time

from common import write_result

from jaxcifar import config as config_lib
from jaxcifar import quantize, train


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
        report = quantize.quantize_workdir(workdir, out / f"{name}_int8", data_dir=args.data_dir,
                                           calibration_images=args.calibration_images,
                                           timing_repeats=args.timing_repeats)
        results[name] = {"measured": True, **report}
        print(f"{name}: " + ", ".join(f"{split} float32 {report[split]['float32_accuracy']:.4f} int8 "
                                      f"{report[split]['int8_accuracy']:.4f}" for split in ("test", "test_jpeg")),
              flush=True)

    write_result("compress_models", {"simple_cnn_epochs": args.simple_cnn_epochs,
                                     "calibration_images": args.calibration_images, "models": results,
                                     "wall_seconds": time.time() - start})


if __name__ == "__main__":
    main()
