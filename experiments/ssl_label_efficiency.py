"""Self-supervised pretraining on unlabelled CIFAR-10, then learning from few labels.

1. Time the `fast` recipe's train step on this machine (the pretraining budget of issue 10
   is 60 minutes where a `fast` epoch takes 150 s, scaled by this machine's epoch time).
2. Pretrain `ssl_simclr` (or --method ssl_vicreg) on all 50,000 training images, labels
   unread; record the kNN accuracy on `test` after every epoch.
3. Final kNN and linear-probe accuracy of the backbone on `test` (jaxcifar.evaluate's
   self-supervised report; the probe uses all 50,000 labels).
4. With 10, 25 and 100 labels per class (the first N images of each class), three ways,
   each with 3 seeds, through `ssl_finetune`: scratch (same network, random init), linear
   probe (`--init_from` the SSL run, backbone frozen), and fine-tune (frozen stage, then
   everything). The SSL run is shared by all seeds.

    python experiments/ssl_label_efficiency.py --data_dir ../shared/tensorflow_datasets

Rerunning with the same --out_dir reuses what is done: finished runs are read back (a
finished workdir resumes to its summary), an interrupted one resumes from its checkpoint,
and the `fast` timing is read from OUT_DIR/fast_epoch_seconds.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from common import fast_epoch_seconds, stats, write_result

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import evaluate, parallel, train

BUDGETS = {10: 60, 25: 40, 100: 20}  # labels per class -> epochs (about 120, 200 and 400 steps of 50)


def transfer_config(way: str, labels_per_class: int, seed: int) -> config_lib.ml_collections.ConfigDict:
    config = config_lib.load_recipe("ssl_finetune")
    epochs = BUDGETS[labels_per_class]
    config.seed, config.batch_size, config.log_every_steps = seed, 50, 10
    config.data.examples_per_class = labels_per_class
    frozen, finetune = dict(config.stages[0]), dict(config.stages[1])
    config.stages = {"scratch": ({"name": "train", "epochs": epochs},),
                     "probe": ({**frozen, "epochs": epochs},),
                     "finetune": ({**frozen, "epochs": epochs // 4}, {**finetune, "epochs": epochs - epochs // 4})}[way]
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/ssl_label_efficiency")
    parser.add_argument("--method", default="ssl_simclr", choices=["ssl_simclr", "ssl_vicreg"])
    parser.add_argument("--pretrain_epochs", type=int, default=10)
    parser.add_argument("--fast_steps", type=int, default=6, help="timed steps of the `fast` recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds_at_100", type=int, default=None,
                        help="run only the first N seeds at 100 labels per class (the costliest budget)")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    parallel.configure_compilation_cache()
    start = time.time()

    ssl_config = config_lib.load_recipe(args.method)
    ssl_config.epochs = args.pretrain_epochs
    data = data_lib.load_data(ssl_config, args.data_dir)
    timing = out / "fast_epoch_seconds.json"
    if not timing.exists():
        timing.write_text(json.dumps(fast_epoch_seconds(data, out / "fast_timing", args.fast_steps)))
    fast_epoch = json.loads(timing.read_text())
    print(f"fast epoch here: {fast_epoch:.0f} s -> pretraining budget {60 * fast_epoch / 150:.0f} min", flush=True)

    pretrain = train.fit(ssl_config, out / "ssl", data=data)
    history = evaluate.read_history(out / "ssl")
    report = evaluate.self_supervised_report(out / "ssl", data.train, data.eval)
    print(f"SSL backbone: kNN {report['knn_accuracy']:.4f}, linear probe {report['linear_probe_accuracy']:.4f}",
          flush=True)

    results: dict[str, dict[str, dict]] = {}
    for labels_per_class in BUDGETS:
        budget = data_lib.Data(data_lib.select_examples(data.train, examples_per_class=labels_per_class), data.eval,
                            data.num_classes, class_names=data.class_names)
        results[str(labels_per_class)] = {}
        for way in ("scratch", "probe", "finetune"):
            accuracies, seconds = [], []
            seeds = args.seeds[:args.seeds_at_100] if labels_per_class == 100 else args.seeds
            for seed in seeds:
                summary = train.fit(transfer_config(way, labels_per_class, seed), out / f"{way}_{labels_per_class}_{seed}",
                                    data=budget, init_from=None if way == "scratch" else str(out / "ssl"))
                accuracies.append(summary["test_accuracy"])
                seconds.append(summary["train_seconds"])
                print(f"{labels_per_class}/class {way} seed {seed}: {summary['test_accuracy']:.4f}", flush=True)
            results[str(labels_per_class)][way] = {**stats(accuracies), "seeds": seeds, "train_seconds": stats(seconds)}

    write_result("ssl_label_efficiency", {
        "method": args.method,
        "seeds": args.seeds,
        "fast_epoch_seconds_here": fast_epoch,
        "fast_epoch_seconds_reference": 150.0,
        "pretraining_budget_minutes_here": 60 * fast_epoch / 150,
        "pretraining": {"epochs": args.pretrain_epochs, "train_seconds": pretrain["train_seconds"],
                        "wall_seconds": pretrain["wall_seconds"],
                        "train_images_per_second": pretrain["train_images_per_second"],
                        "knn_accuracy_per_epoch": [h["eval_knn_accuracy"] for h in history],
                        "train_seconds_per_epoch": [h["epoch_train_seconds"] for h in history],
                        "test_knn_accuracy": report["knn_accuracy"],
                        "test_linear_probe_accuracy_all_labels": report["linear_probe_accuracy"],
                        "test_examples": len(data.eval)},
        "budget_epochs": {str(k): v for k, v in BUDGETS.items()},
        "labels_per_class": results,
        "total_wall_seconds": time.time() - start,
    })


if __name__ == "__main__":
    main()
