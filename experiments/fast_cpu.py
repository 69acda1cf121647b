"""Time-to-accuracy of the `fast` or `fast_muon` recipe on this machine, against the
airbench94 / airbench94_muon anchors.

For each seed: train `--config RECIPE` (per-epoch evaluation without TTA, as airbench
reports its curve; evaluation time is not counted), record each epoch's training seconds
and `test` accuracy, the seconds to reach 85% and 94%, and the final accuracy with and
without flip+translate TTA. `seconds_to_94` is counted as airbench counts it: training
seconds at the first evaluation that reaches 94%, per epoch without TTA and, after the last
epoch, with the recipe's TTA (its final evaluation; that pass's seconds are added).
Writes experiments/results/RECIPE_cpu.json.

    python experiments/fast_cpu.py --data_dir ../shared/tensorflow_datasets --seeds 0 1 2
    python experiments/fast_cpu.py --recipe fast_muon --data_dir ../shared/tensorflow_datasets --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from common import seconds_to, stats, write_result

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import evaluate, runs, train

# Each recipe's anchor on one of this project's 2-core CPU machines, as its issue quotes it:
# per-epoch `test` accuracy (no TTA) and cumulative training seconds. Machines differ in speed,
# so experiments/airbench_cpu.py and airbench_muon_cpu.py rerun the anchors on the machine at
# hand for a same-sitting ratio.
ISSUE_ANCHORS = {
    "fast": {"name": "airbench94 (PyTorch, fp32), an earlier machine",
             "test_accuracy": [0.600, 0.761, 0.667, 0.840, 0.852, 0.858, 0.894, 0.907, 0.928, 0.942],
             "train_seconds": [226, 437, 658, 853, 1057, 1267, 1473, 1684, 1892, 2082],
             "final_tta_accuracy": 0.943, "final_seconds": 2091},
    "fast_muon": {"name": "airbench94_muon (PyTorch, fp32), a 2-core AVX2 machine (issue 13)",
                  "test_accuracy": [0.582, 0.780, 0.768, 0.805, 0.863, 0.904, 0.923, 0.927],
                  "train_seconds": [404, 793, 1153, 1502, 1854, 2208, 2545, 2882],
                  "final_tta_accuracy": 0.943, "final_seconds": 2897},
}


def recipe_config(recipe: str, seed: int, epochs: int | None) -> config_lib.ml_collections.ConfigDict:
    cfg = config_lib.load_recipe(recipe)
    cfg.seed, cfg.tta = seed, False  # per-epoch curve without TTA; TTA measured once at the end
    if epochs:
        cfg.epochs = epochs
    return cfg


def collect(workdir: pathlib.Path, seed: int, data: data_lib.Data) -> dict:
    """The seed's record from its workdir; usable while a run is still going (`complete`
    says whether it finished), since CPU runs are long."""
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    seconds = [float(s) for s in np.cumsum([h["epoch_train_seconds"] for h in history])]
    accuracies = [h["eval_accuracy"] for h in history]
    summary_file = workdir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    run = runs.load_run(workdir, "latest")
    start = time.perf_counter()
    final_accuracy_tta = evaluate.evaluate_run(run, data.eval, tta=True).report["accuracy"]
    tta_seconds = time.perf_counter() - start  # includes compiling the TTA evaluation: an upper bound
    seconds_to_94 = seconds_to(0.94, accuracies, seconds)
    if seconds_to_94 is None and summary is not None and final_accuracy_tta >= 0.94:
        seconds_to_94 = seconds[-1] + tta_seconds
    return {"seed": seed, "complete": summary is not None, "epochs_done": len(history),
            "epoch_train_seconds": [h["epoch_train_seconds"] for h in history],
            "cumulative_train_seconds": seconds, "test_accuracy": accuracies,
            "seconds_to_85": seconds_to(0.85, accuracies, seconds), "seconds_to_94": seconds_to_94,
            "final_accuracy": accuracies[-1], "final_accuracy_tta": final_accuracy_tta,
            "final_tta_seconds": tta_seconds,
            "compile_seconds": summary and summary["compile_seconds"],
            "train_images_per_second": summary and summary["train_images_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast", choices=sorted(ISSUE_ANCHORS))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (for a quick look)")
    parser.add_argument("--out_dir", default=None, help="default: runs/RECIPE_cpu")
    parser.add_argument("--result_name", default=None,
                        help="experiments/results/NAME.json (default RECIPE_cpu); a separate name keeps a second "
                             "sitting from overwriting the first")
    parser.add_argument("--collect_only", action="store_true",
                        help="write the JSON from the workdirs as they are (e.g. while runs are unfinished)")
    parser.add_argument("--note", help="recorded in the JSON, e.g. how the runs were scheduled")
    args = parser.parse_args()
    data = data_lib.load_data(config_lib.load_recipe(args.recipe), args.data_dir)
    out_dir = pathlib.Path(args.out_dir or f"runs/{args.recipe}_cpu")
    workdirs = {s: out_dir / f"seed{s}" for s in args.seeds}
    if not args.collect_only:
        for seed, workdir in workdirs.items():
            train.fit(recipe_config(args.recipe, seed, args.epochs), workdir, data=data)
    per_seed = [collect(workdir, seed, data) for seed, workdir in workdirs.items()]
    reached = lambda key: [r[key] for r in per_seed if r[key] is not None]  # noqa: E731
    write_result(args.result_name or f"{args.recipe}_cpu", {
        "runs": per_seed,
        "means": {"final_accuracy": stats([r["final_accuracy"] for r in per_seed]),
                  "final_accuracy_tta": stats([r["final_accuracy_tta"] for r in per_seed]),
                  "seconds_to_85": stats(reached("seconds_to_85")) if reached("seconds_to_85") else None,
                  "seconds_to_94": stats(reached("seconds_to_94")) if reached("seconds_to_94") else None,
                  "seeds_reaching_94": len(reached("seconds_to_94"))},
        "issue_anchor": ISSUE_ANCHORS[args.recipe],
        **({"note": args.note} if args.note else {}),
    })


if __name__ == "__main__":
    main()
