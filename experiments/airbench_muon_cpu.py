"""airbench94_muon (Keller Jordan's CIFAR-10 speed record, one PyTorch file) on this machine's
CPU and the shared data: the same-sitting anchor for `fast_muon` (experiments/fast_cpu.py
--recipe fast_muon).

You supply the file; it is not part of this repository. For example, from a clone of
github.com/KellerJordan/cifar10-airbench, copy `airbench94_muon.py` into the git-ignored
`third_party/`. The script imports it as a module and runs its own `main` once, unchanged,
after adjusting only the edges around it:
  * device: `.cuda()` is the identity, and `torch.load(..., map_location=cuda)` loads to the CPU;
  * dtype: float32 throughout. `.half()` and `.bfloat16()` (its Newton-Schulz iteration) return
    float32, because on an AVX2 CPU bfloat16 matmuls are about 28x slower than float32;
  * timer: `torch.cuda.Event` is a wall-clock timer and `torch.cuda.synchronize` a no-op (CPU
    work is synchronous), so its own `time_seconds` counts training and the final TTA pass,
    not the per-epoch evaluation, as on a GPU;
  * data: CIFAR-10 comes from TFDS (`train`, and the 1,000-image `test` split), written in the
    `train.pt`/`test.pt` format its `CifarLoader` reads, and a stand-in provides the one
    torchvision transform it uses (experiments/airbench_cpu.py explains both).
Two things its `__main__` block does are skipped, and `main` itself is untouched:
  * `torch.compile` (on the Newton-Schulz function and the model) is the identity: on a GPU
    it is a speed-up whose compile time is kept out of the timing by a warm-up run, and on
    this CPU that warm-up would be a whole extra 50-minute training run;
  * so the warm-up run (`main("warmup", model)`, random labels) is not run, and one seeded run
    replaces its 200-run loop.
Per-epoch `test` accuracy and cumulative training seconds are read from the rows it prints.
`seconds_to_94` follows the record's own rule: its final TTA evaluation, if that reaches 94%.

    pip install -e ".[bench]"    # torch 2.13 (CPU)
    python experiments/airbench_muon_cpu.py --script third_party/airbench94_muon.py \
        --data_dir ../shared/tensorflow_datasets

Writes experiments/results/airbench94_muon_cpu.json (`--result_name` for another name).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import pathlib
import sys
import tempfile

import torch
from airbench_cpu import WallClockEvent, record_printed_rows, torchvision_normalize_only, write_airbench_data
from common import seconds_to, write_result
from torch import nn


def run_on_cpu_in_fp32() -> None:
    sys.modules.setdefault("torchvision", torchvision_normalize_only())
    sys.modules.setdefault("torchvision.transforms", sys.modules["torchvision"].transforms)
    torch.Tensor.half = torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.float()
    torch.Tensor.cuda = nn.Module.cuda = nn.Module.half = lambda self, *args, **kwargs: self
    torch.cuda.Event, torch.cuda.synchronize = WallClockEvent, lambda *args: None
    torch.compile = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    load = torch.load
    torch.load = lambda *args, **kwargs: load(*args, **{**kwargs, "map_location": "cpu"})


def import_script(path: pathlib.Path):
    """The file as a module (its `if __name__ == "__main__"` block does not run)."""
    spec = importlib.util.spec_from_file_location("airbench94_muon", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", required=True, help="path of airbench94_muon.py")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_images", type=int, default=None,
                        help="keep only the first N training images (a smoke test; not for a measurement)")
    parser.add_argument("--result_name", default="airbench94_muon_cpu", help="experiments/results/NAME.json")
    args = parser.parse_args()
    script, data_dir = pathlib.Path(args.script).resolve(), os.path.abspath(args.data_dir)
    if not script.is_file():
        raise SystemExit(f"--script {script}: no such file. Copy airbench94_muon.py from "
                         "github.com/KellerJordan/cifar10-airbench into third_party/ and pass its path.")
    run_on_cpu_in_fp32()
    record = import_script(script)
    rows = record_printed_rows(record)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as root:
        write_airbench_data(data_dir, root, args.train_images)
        os.chdir(root)  # it opens its data as the relative path 'cifar10'
        model = record.CifarNet().cuda().to(memory_format=torch.channels_last)
        record.print_columns(record.logging_columns_list, is_head=True)
        final_tta_accuracy = record.main(args.seed, model)
    epochs = [r for r in rows if isinstance(r["epoch"], int)]
    final = next(r for r in rows if r["epoch"] == "eval")
    accuracies = [round(r["val_acc"], 4) for r in epochs]
    seconds = [r["time_seconds"] for r in epochs]
    reached = final_tta_accuracy >= 0.94
    write_result(args.result_name, {
        "what": "airbench94_muon (PyTorch, fp32, on this CPU; see the script's docstring for the edits), "
                "test = the shared 1,000-image split",
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "seed": args.seed,
        "train_images": args.train_images or 50000, "epochs": len(epochs),
        "test_accuracy": accuracies, "cumulative_train_seconds": seconds,
        "seconds_to_85": seconds_to(0.85, accuracies, seconds),
        "final_accuracy": accuracies[-1], "final_accuracy_tta": round(final_tta_accuracy, 4),
        "final_seconds_with_tta": final["time_seconds"],
        "seconds_to_94": final["time_seconds"] if reached else None,
        "seconds_to_94_rule": "training seconds (whitening init and final TTA pass included, per-epoch evaluation "
                              "not) at the final TTA evaluation, when it reaches 94%, as airbench counts",
    })


if __name__ == "__main__":
    main()
