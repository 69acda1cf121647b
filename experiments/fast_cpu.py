"""Time-to-accuracy of the `fast` recipe on this machine, against the airbench94 anchor.

For each seed: train `--config fast` (per-epoch evaluation without TTA, as airbench
reports its curve; evaluation time is not counted), record each epoch's training seconds
and `test` accuracy, the seconds to reach 85% and 94%, and the final accuracy with and
without flip+translate TTA. Writes experiments/results/fast_cpu.json.

    python experiments/fast_cpu.py --data_dir ../shared/tensorflow_datasets --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from common import stats, write_result

from jaxcifar import config as config_lib
from jaxcifar import evaluate, runs, train

# airbench94 (PyTorch, fp32) on this project's 2-core CPU, from the issue: per-epoch `test`
# accuracy and cumulative training seconds.
AIRBENCH_ANCHOR = {
    "test_accuracy": [0.600, 0.761, 0.667, 0.840, 0.852, 0.858, 0.894, 0.907, 0.928, 0.942],
    "train_seconds": [226, 437, 658, 853, 1057, 1267, 1473, 1684, 1892, 2082],
    "final_tta_accuracy": 0.943, "final_seconds": 2091,
}


def seconds_to(threshold: float, accuracies: list[float], cumulative_seconds: list[float]) -> float | None:
    return next((s for a, s in zip(accuracies, cumulative_seconds) if a >= threshold), None)


def run_seed(seed: int, data: train.Data, workdir: pathlib.Path, epochs: int | None) -> dict:
    cfg = config_lib.load_recipe("fast")
    cfg.seed, cfg.tta = seed, False  # per-epoch curve without TTA; TTA measured once at the end
    if epochs:
        cfg.epochs = epochs
    summary = train.fit(cfg, workdir, data=data)
    history = train.Workdir(workdir, cfg).history()
    seconds = list(np.cumsum([h["epoch_train_seconds"] for h in history]))
    accuracies = [h["eval_accuracy"] for h in history]
    run = runs.load_run(workdir, "latest")
    with_tta = evaluate.evaluate_run(run, data.eval, tta=True).report["accuracy"]
    return {"seed": seed, "epoch_train_seconds": [h["epoch_train_seconds"] for h in history],
            "cumulative_train_seconds": seconds, "test_accuracy": accuracies,
            "seconds_to_85": seconds_to(0.85, accuracies, seconds), "seconds_to_94": seconds_to(0.94, accuracies, seconds),
            "final_accuracy": summary["test_accuracy"], "final_accuracy_tta": with_tta,
            "compile_seconds": summary["compile_seconds"], "train_images_per_second": summary["train_images_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (for a quick look)")
    parser.add_argument("--out_dir", default="runs/fast_cpu")
    args = parser.parse_args()
    data = train.load_data(config_lib.load_recipe("fast"), args.data_dir)
    per_seed = [run_seed(s, data, pathlib.Path(args.out_dir) / f"seed{s}", args.epochs) for s in args.seeds]
    reached = lambda key: [r[key] for r in per_seed if r[key] is not None]  # noqa: E731
    write_result("fast_cpu", {
        "runs": per_seed,
        "means": {"final_accuracy": stats([r["final_accuracy"] for r in per_seed]),
                  "final_accuracy_tta": stats([r["final_accuracy_tta"] for r in per_seed]),
                  "seconds_to_85": stats(reached("seconds_to_85")) if reached("seconds_to_85") else None,
                  "seconds_to_94": stats(reached("seconds_to_94")) if reached("seconds_to_94") else None,
                  "seeds_reaching_94": len(reached("seconds_to_94"))},
        "airbench94_anchor_same_cpu": AIRBENCH_ANCHOR,
    })


if __name__ == "__main__":
    main()
