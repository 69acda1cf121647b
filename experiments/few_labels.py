"""Few labels: many-crop self-supervised pretraining, then learning from 1, 10 and 25 labels
per class. Every finished part is written into experiments/results/few_labels.json as soon
as it ends (a table with parts missing renders them as pending), and every training resumes
from its checkpoint, so the experiment can stop and go on across sessions.

    python experiments/few_labels.py --data_dir ../shared/tensorflow_datasets [--parts pretrain ...]

Parts:
  pretrain   `ssl_multicrop` on all 50,000 training images, labels unread; the kNN accuracy
             on `test` after every epoch with its wall time (the curve), and the final
             backbone's kNN and linear probe (the probe with every label, as a ceiling).

The budget is the issue's: 60 minutes of pretraining where a `fast` epoch takes 150 s. The
recipe's epoch count was sized for it on this project's 2-core machine (1.7 s a step of 128
images x 16 crops); the JSON records the wall time it took and the load while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import time

from common import RESULTS, write_result

from jaxcifar import config as config_lib
from jaxcifar import evaluate, train

NAME = "few_labels"
PRETRAIN_RECIPE = "ssl_multicrop"


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent).stdout.strip()


def record(part: str, result: dict) -> None:
    """Write `result` as `part` of few_labels.json, keeping the parts already there."""
    path = RESULTS / f"{NAME}.json"
    parts = json.loads(path.read_text()).get("parts", {}) if path.exists() else {}
    parts[part] = {**result, "commit": commit(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    write_result(NAME, {"parts": parts})


def pretrain(out: pathlib.Path, data_dir: str | None) -> None:
    config = config_lib.load_recipe(PRETRAIN_RECIPE)
    data = train.load_data(config, data_dir)
    started = time.time()
    summary = train.fit(config, out / "pretrain", data=data)
    history = evaluate.read_history(out / "pretrain")
    report = evaluate.self_supervised_report(out / "pretrain", data.train, data.eval)
    record("pretrain", {
        "recipe": PRETRAIN_RECIPE, "seed": config.seed, "epochs": config.epochs, "method": config.method.to_dict(),
        "model_kwargs": config.model_kwargs.to_dict(),
        "train_seconds": summary["train_seconds"], "wall_seconds_this_session": time.time() - started,
        "knn_accuracy_per_epoch": [h["eval_knn_accuracy"] for h in history],
        "train_seconds_per_epoch": [h["epoch_train_seconds"] for h in history],
        "test_knn_accuracy": report["knn_accuracy"],
        "test_linear_probe_accuracy_all_labels": report["linear_probe_accuracy"],
        "test_examples": len(data.eval)})


PARTS = {"pretrain": pretrain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/few_labels")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = parser.parse_args()
    train.configure_compilation_cache()
    for part in args.parts:
        PARTS[part](pathlib.Path(args.out_dir), args.data_dir)


if __name__ == "__main__":
    main()
