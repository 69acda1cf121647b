"""Helpers shared by the experiment scripts: machine description and result files."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np


def machine() -> dict:
    import jax

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": jax.devices()[0].platform,
            "devices": jax.device_count(), "python": platform.python_version(), "jax": jax.__version__,
            # Timings on a shared 2-core machine are only comparable at similar load.
            "load_average_at_write": [round(x, 2) for x in os.getloadavg()]}


def stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}


def seconds_to(threshold: float, accuracies: list[float], cumulative_seconds: list[float]) -> float | None:
    """Training seconds at the first evaluation reaching `threshold` (None if none does)."""
    return next((s for a, s in zip(accuracies, cumulative_seconds) if a >= threshold), None)


HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def commit() -> str:
    """The checkout's commit a result came from, '-dirty' when tracked files other than the
    results differ from it (an experiment that writes a row as it ends each part has changed
    its own results file before its next part ends)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)experiments/results")
    return git("rev-parse", "--short=7", "HEAD") + ("-dirty" if changed else "")


def write_result(name: str, result: dict, directory: pathlib.Path = RESULTS) -> pathlib.Path:
    """DIRECTORY/NAME.json (experiments/results/ by default) with the command, machine, date
    and commit added."""
    path = pathlib.Path(directory) / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    result = {"command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
              "commit": commit(), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


FAST_EPOCH_REFERENCE_SECONDS = 150.0  # the `fast` epoch the issues' CPU budgets are written for


def fast_epoch_seconds(data, steps: int) -> float:
    """Seconds of one `fast` epoch here, from `steps` timed steps of its real train step
    (built as the loop builds it, after one compiling step), times its steps per epoch: the
    unit in which the CPU budgets of the experiments are scaled to this machine."""
    import time

    import jax

    from jaxcifar import config as config_lib
    from jaxcifar import stages

    first = stages.build_step(config_lib.load_recipe("fast"), data)
    state, batches = first.state, first.stream.batches(0, 0)
    state, metrics = first.train_step(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.time()
    for _ in range(steps):
        state, metrics = first.train_step(state, next(batches))
    jax.block_until_ready(metrics)
    return (time.time() - start) / steps * first.stream.steps_per_epoch
