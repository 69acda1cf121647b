"""airbench94 itself (Keller Jordan's PyTorch reference, the `airbench` package) on this
machine's CPU and the shared data: the same-machine anchor for experiments/fast_cpu.py.

The package is written for one CUDA GPU in fp16. This script runs its own `train94`
unchanged, in fp32 on the CPU, by adjusting only the edges around it:
  * `.cuda()` / `.half()` keep modules on the CPU in fp32 (images become fp32 instead of
    fp16; BatchNorm is fp32 in airbench anyway), and `CifarLoader` loads to the CPU;
  * `torch.cuda.Event` is a wall-clock timer, so airbench's own `total_time_seconds` counts
    training (and its final TTA pass) but not the per-epoch evaluation, as on a GPU;
  * CIFAR-10 comes from TFDS (`train`, and the 1,000-image `test` split) written in the
    `train.pt`/`test.pt` format its `CifarLoader` reads, instead of a torchvision download;
  * torchvision's CUDA wheel cannot load beside the CPU torch here, and airbench only uses
    its `Normalize`, so a stand-in module provides that one transform.
Per-epoch `test` accuracy and cumulative training seconds are read from the table it prints.

    pip install -e ".[bench]"    # torch 2.13 (CPU) and airbench 0.1.8
    python experiments/airbench_cpu.py --data_dir ../shared/tensorflow_datasets

Writes experiments/results/airbench_cpu.json (`--seed 1 --result_name airbench_cpu_seed1`
for another seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types

import torch
from common import seconds_to, write_result
from torch import nn

from jaxcifar import data as data_lib


class WallClockEvent:
    """torch.cuda.Event's timing interface on the CPU (CPU work is synchronous)."""

    def __init__(self, enable_timing: bool = True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return 1e3 * (end.t - self.t)


def torchvision_normalize_only() -> types.ModuleType:
    class Normalize(nn.Module):  # torchvision.transforms.Normalize on (N, C, H, W) tensors
        def __init__(self, mean, std):
            super().__init__()
            self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

        def forward(self, x):
            return (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)

    module = types.ModuleType("torchvision")
    module.transforms = types.SimpleNamespace(Normalize=Normalize)
    return module


def run_on_cpu_in_fp32() -> None:
    sys.modules.setdefault("torchvision", torchvision_normalize_only())
    sys.modules.setdefault("torchvision.transforms", sys.modules["torchvision"].transforms)
    torch.Tensor.half = lambda self, *args, **kwargs: self.float()
    nn.Module.half = nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.Event, torch.cuda.synchronize = WallClockEvent, lambda *args: None


def record_printed_rows(module: types.ModuleType) -> list[dict]:
    """A list that collects every row airbench's `module.print_training_details` prints
    (its variables: epoch, accuracies, seconds), which it keeps printing."""
    rows = []
    print_row = module.print_training_details
    module.print_training_details = lambda variables, is_final_entry: (rows.append(dict(variables)),
                                                                       print_row(variables, is_final_entry))
    return rows


def write_loader_files(root: str, splits: dict[str, data_lib.ArraySplit], class_names: list[str]) -> None:
    """`splits` ('train' and 'test') as `root/cifar10/{train,test}.pt`, where CifarLoader('cifar10') looks."""
    os.makedirs(os.path.join(root, "cifar10"))
    for name, split in splits.items():
        torch.save({"images": torch.from_numpy(split.images), "labels": torch.from_numpy(split.labels).long(),
                    "classes": list(class_names)}, os.path.join(root, "cifar10", f"{name}.pt"))


def write_airbench_data(data_dir: str, root: str, train_images: int | None = None) -> None:
    """TFDS splits where CifarLoader('cifar10') looks (only the first `train_images` training
    images, when given: a smoke test)."""
    train = data_lib.load_split("train", data_dir)
    write_loader_files(root, {"train": data_lib.ArraySplit(train.images[:train_images], train.labels[:train_images]),
                              "test": data_lib.load_split("test", data_dir)},
                       data_lib.tfds_class_names("cifar10", data_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result_name", default="airbench_cpu", help="experiments/results/NAME.json")
    parser.add_argument("--epochs", type=float, default=None, help="override airbench's 9.9 (for a quick look)")
    args = parser.parse_args()
    data_dir = os.path.abspath(args.data_dir)
    run_on_cpu_in_fp32()
    import airbench
    from airbench import lib_airbench94, utils

    loader_init = utils.CifarLoader.__init__  # its last argument, `gpu=0`, is where it loads the data
    loader_init.__defaults__ = (*loader_init.__defaults__[:-1], "cpu")
    rows = record_printed_rows(utils)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as root:
        write_airbench_data(data_dir, root)
        os.chdir(root)  # airbench opens its test set as the relative path 'cifar10'
        hyp = lib_airbench94.hyp
        loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"],
                                      altflip=True)
        airbench.train94(loader, **({"epochs": args.epochs} if args.epochs else {}))
    epochs = [r for r in rows if isinstance(r["epoch"], int)]
    final = next(r for r in rows if r["epoch"] == "eval")
    accuracies = [round(r["val_acc"], 4) for r in epochs]  # float32 .item() values
    seconds = [r["total_time_seconds"] for r in epochs]
    train_steps = final["current_steps"]
    write_result(args.result_name, {
        "what": "airbench94 (airbench 0.1.8, PyTorch, fp32) on this CPU, test = the shared 1,000-image split",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "seed": args.seed,
        "epochs": args.epochs or hyp["opt"]["train_epochs"], "train_steps": train_steps,
        "test_accuracy": accuracies, "cumulative_train_seconds": seconds,
        "seconds_to_85": seconds_to(0.85, accuracies, seconds), "seconds_to_94": seconds_to(0.94, accuracies, seconds),
        "final_accuracy": accuracies[-1], "final_accuracy_tta": round(final["tta_val_acc"], 4),
        "final_seconds_with_tta": final["total_time_seconds"],
        "train_images_per_second": train_steps * hyp["opt"]["batch_size"] / seconds[-1],
    })


if __name__ == "__main__":
    main()
