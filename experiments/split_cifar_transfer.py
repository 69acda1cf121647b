"""Split-CIFAR transfer, the offline stand-in for "ImageNet -> CIFAR-10".

Pretrain a small ResNet on CIFAR-10 classes 0-4 (all 25,000 training images), then
learn classes 5-9 from 100 labelled images per class, three ways, over several seeds:
  scratch   the same network trained from random initialisation on the 500 images;
  frozen    the pretrained backbone frozen (BatchNorm in inference mode) + a new head;
  finetune  the frozen stage, then everything fine-tuned at a lower learning rate.
Evaluated on the 515 exact `test` images of classes 5-9, and on the 5,000 `test_jpeg`
images of those classes as a larger, JPEG-corrupted second read. The pretraining run is
shared by all seeds; the seed varies the head initialisation, data order and augmentation.

    python experiments/split_cifar_transfer.py --data_dir ../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import pathlib
import time

from common import stats, write_result

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import train

GROUPS = {"backbone": "backbone/.*", "head": "head/.*"}
NETWORK = dict(model="resnet18", model_kwargs={"width": 16}, param_groups=GROUPS,
               lr_multipliers={"backbone": 1.0, "head": 1.0}, optimizer="sgd", momentum=0.9, nesterov=True,
               weight_decay=5e-4, schedule="cosine", label_smoothing=0.1, augment={"crop_padding": 4, "flip": True})
TRANSFER_DATA = {"classes": (5, 6, 7, 8, 9), "examples_per_class": 100, "extra_eval_splits": ("test_jpeg",)}


def pretrain_config(epochs: int) -> config_lib.ml_collections.ConfigDict:
    return config_lib.recipe(NETWORK, data={"classes": (0, 1, 2, 3, 4)}, epochs=epochs, batch_size=128, lr=0.1,
                             warmup_epochs=1.0, eval_batch_size=500)


def transfer_config(mode: str, epochs: int, seed: int) -> config_lib.ml_collections.ConfigDict:
    frozen = {"name": "frozen", "lr_multipliers": {"backbone": None, "head": 1.0}}
    stages = {"scratch": (),
              "frozen": ({**frozen, "epochs": epochs},),
              "finetune": ({**frozen, "epochs": epochs // 2}, {"name": "finetune", "epochs": epochs // 2, "lr": 0.01})}
    return config_lib.recipe(NETWORK, data=TRANSFER_DATA, epochs=epochs, batch_size=50, lr=0.05, warmup_epochs=2.0,
                             eval_batch_size=515, seed=seed, stages=stages[mode], log_every_steps=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/split_cifar")
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--transfer_epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    start = time.time()

    pretrain = train.fit(pretrain_config(args.pretrain_epochs), out / "pretrain", data_dir=args.data_dir)
    transfer_data = data_lib.load_data(transfer_config("scratch", args.transfer_epochs, 0), args.data_dir)
    results: dict[str, dict[str, list[float]]] = {}
    for mode in ("scratch", "frozen", "finetune"):
        for seed in args.seeds:
            summary = train.fit(transfer_config(mode, args.transfer_epochs, seed), out / f"{mode}_seed{seed}",
                                data=transfer_data, init_from=None if mode == "scratch" else str(out / "pretrain"))
            runs = results.setdefault(mode, {"test": [], "test_jpeg": []})
            runs["test"].append(summary["test_accuracy"])
            runs["test_jpeg"].append(summary["extra_eval_accuracy"]["test_jpeg"])
            print(f"{mode} seed {seed}: test {summary['test_accuracy']:.3f} "
                  f"test_jpeg {summary['extra_eval_accuracy']['test_jpeg']:.3f}", flush=True)

    write_result("split_cifar_transfer", {
        **{f"{mode}_acc": stats(r["test"]) for mode, r in results.items()},
        **{f"{mode}_acc_test_jpeg": stats(r["test_jpeg"]) for mode, r in results.items()},
        "eval": "test classes 5-9 (515 exact images); *_test_jpeg: test_jpeg classes 5-9 (5,000 JPEG copies)",
        "pretrain": {"classes": [0, 1, 2, 3, 4], "epochs": args.pretrain_epochs,
                     "test_accuracy_classes_0_4": pretrain["test_accuracy"]},
        "transfer": {"classes": [5, 6, 7, 8, 9], "examples_per_class": 100, "epochs": args.transfer_epochs,
                     "seeds": args.seeds},
        "network": "resnet18 (CIFAR stem) at width 16",
        "wall_seconds": time.time() - start,
    })


if __name__ == "__main__":
    main()
