"""The CPU device split's verdict from the real training loop (issue 27, item 3).

Two questions, measured on the machine at hand and written to one JSON:

1. Speed in the real loop: `python -m jaxcifar.train --config RECIPE` with the host as one
   device, split into two (`--xla_force_host_platform_device_count=2`), and split with the
   memory-optimised scheduler. Each recipe runs at its own batch size; the throughput is
   its last epoch's `train_images_per_second` (compilation is in the first). The variants
   run in turns, the order rotated each round, so the load of a shared machine hits them
   alike; `uptime`'s load is recorded before every run.
2. Aborts: XLA:CPU's all-reduce rendezvous can kill a split process (benchmarks/NOTES.md
   section 3). Each round starts one fresh worker per abort variant (benchmarks/parity.py's
   crop+flip step at a global batch of 64) and counts the workers that died.

    python benchmarks/cpu_split.py --data_dir ../shared/tensorflow_datasets --rounds 2 --abort_rounds 6

Writes benchmarks/results/cpu_split.json (`--out` for another path).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from harness import log_dir, machine_info, run_group
from parity import variant_spec

REPO = pathlib.Path(__file__).resolve().parent.parent
SPLIT = "--xla_force_host_platform_device_count=2"
MEMORY_SCHEDULER = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
# Real-loop variants: name -> XLA_FLAGS (jaxcifar adds its Eigen-convolution default to each).
LOOP_VARIANTS = {"1 device": "", "2 devices": SPLIT, "2 devices, memory scheduler": f"{SPLIT} {MEMORY_SCHEDULER}"}
# Each recipe with the overrides that keep one run to about a minute here (simple_cnn's whole
# train split; `fast` on 500 images per class, which is 4 steps per epoch at its batch 1,024,
# and `fast_muon` on 1,000, 5 steps at its batch 2,000, each for 3 epochs: their whitening
# bias trains for 3).
RECIPES = {
    "simple_cnn": ["--config.epochs=2"],
    "fast": ["--config.epochs=3", "--config.data.examples_per_class=500", "--config.tta=False"],
    "fast_muon": ["--config.epochs=3", "--config.data.examples_per_class=1000", "--config.tta=False"],
}
# Abort variants (parity.py names): XLA's defaults, jaxcifar's Eigen convolutions, and those with
# the memory-optimised scheduler, each on 2 devices at a global batch of 64.
ABORT_VARIANTS = ("dev2@64", "no_ynn_conv_dev2@64", "no_ynn_conv_dev2_memsched@64")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_once(recipe: str, xla_flags: str, data_dir: str) -> dict:
    """One real-loop run in a fresh process; its last epoch's throughput and its accuracy."""
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAXCIFAR_COMPILATION_CACHE="", PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "jaxcifar.train", "--config", recipe, "--workdir", workdir,
                   "--data_dir", data_dir, *RECIPES[recipe]]
        record = {"load_before": load()}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        record["wall_seconds"] = round(time.perf_counter() - start, 1)
        record["returncode"] = done.returncode
        if done.returncode:
            record["stderr_tail"] = done.stderr[-1500:]
            return record
        history = [json.loads(line) for line in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()]
        summary = json.loads(pathlib.Path(workdir, "summary.json").read_text())
    record.update(last_epoch_images_per_second=round(history[-1]["train_images_per_second"], 1),
                  epoch_train_seconds=[round(h["epoch_train_seconds"], 2) for h in history],
                  test_accuracy=summary["test_accuracy"])
    return record


def measure_loop(recipe: str, rounds: int, data_dir: str, runs: dict, save: Callable[[], None]) -> None:
    """Fill `runs` ({variant: [run records]}) with `recipe`'s runs, the variants interleaved
    round by round; `save()` after each."""
    names = list(LOOP_VARIANTS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            record = train_once(recipe, LOOP_VARIANTS[name], data_dir)
            runs.setdefault(name, []).append(record)
            save()
            print(f"{recipe} round {r + 1} [{name}]: {record.get('last_epoch_images_per_second')} img/s, "
                  f"rc {record['returncode']}, load {record['load_before']}", flush=True)


def measure_aborts(rounds: int, reps: int, out: dict, save: Callable[[], None]) -> None:
    """Fill `out` ({variant: {'runs', 'aborted', 'errors', 'medians', 'loads'}}): fresh workers
    each round; `save()` after each round."""
    out.update({name: {"runs": 0, "aborted": 0, "errors": [], "medians": [], "loads": []} for name in ABORT_VARIANTS})
    for r in range(rounds):
        names = list(ABORT_VARIANTS)
        names = names[r % len(names):] + names[:r % len(names)]
        before = load()
        results = run_group([variant_spec(name, "simple_cnn", augment=True) for name in names], reps, 2.0,
                            log_dir(), progress=lambda line: None)
        for result in results:
            entry, summary = out[result.spec.label], result.summary()
            entry["runs"] += 1
            entry["loads"].append(before)
            if summary["error"]:
                entry["aborted"] += 1
                entry["errors"].append(summary["error"][-600:])
            else:
                entry["medians"].append(round(summary["median"], 1))
        save()
        print(f"abort round {r + 1}/{rounds}: " + ", ".join(f"{n}={out[n]['aborted']}/{out[n]['runs']}"
                                                        for n in ABORT_VARIANTS), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--rounds", type=int, default=2, help="real-loop runs of each variant per recipe")
    parser.add_argument("--abort_rounds", type=int, default=6, help="fresh workers per abort variant")
    parser.add_argument("--abort_reps", type=int, default=5, help="timed bursts of about 2 s per worker")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cpu_split.json"))
    args = parser.parse_args()
    data_dir = os.path.abspath(args.data_dir)
    result = {"machine": machine_info(), "note": "the variants ran in turns, the order rotated each round; "
                                                 "each run's load is recorded before it",
              "loop_variants": LOOP_VARIANTS, "recipes": {r: RECIPES[r] for r in args.recipes},
              "abort_variants": {name: variant_spec(name, "simple_cnn", True).xla_flags for name in ABORT_VARIANTS},
              "loop": {}, "aborts": {}}

    def save() -> None:  # after every run, so that a measurement cut short still leaves its evidence
        result["load_at_save"] = load()
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    # The first recipe, then the aborts, then the other recipes: the slow `fast` runs come last.
    measure_loop(args.recipes[0], args.rounds, data_dir, result["loop"].setdefault(args.recipes[0], {}), save)
    measure_aborts(args.abort_rounds, args.abort_reps, result["aborts"], save)
    for recipe in args.recipes[1:]:
        measure_loop(recipe, args.rounds, data_dir, result["loop"].setdefault(recipe, {}), save)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
