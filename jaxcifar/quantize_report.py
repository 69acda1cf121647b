"""quantize's report: how fast each artefact runs on this CPU, and the report as it is printed.

Named for what it serves, `python -m jaxcifar.quantize`'s report.json and its closing lines,
and kept apart from jaxcifar/quantize.py, which makes the artefacts (BatchNorm folding, Qwix
int8, LiteRT, proofs, evaluation) and calls this module to time them. Nothing here
quantizes or opens a run: timing takes any `images -> logits` calls (experiments time
pruned exports with it too), and the printing reads only a report dict, so a stored
report.json renders as the command printed it (experiments/report.py).

- `time_artefacts`: median seconds and images/s per artefact and batch size, in turns;
  `timed_label` / `timed_name` key and name a LiteRT artefact timed per thread count;
  `fastest`: the one to deploy per batch size.
- `machine`, `instruction_sets`, `cpu_flags`: what int8 speed depends on (AVX2, AVX-512,
  VNNI, AMX), recorded beside every timing.
- `tradeoff_table`, `fastest_lines`, `accuracy_cell`: what the command prints at its end.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np


def time_artefacts(calls: dict[int, dict[str, Callable[[np.ndarray], object]]], images: np.ndarray,
                   repeats: int) -> dict[str, dict]:
    """Median seconds per call and images/s of each artefact (name -> images -> logits) at
    each batch size it is timed at ({batch size: {name: call}}). At a batch size the
    artefacts take turns call by call, so a change in the machine's load falls on all."""
    latency = {}
    for b, timed in calls.items():
        batch, seconds = images[:b], {name: [] for name in timed}
        for call in timed.values():
            jax.block_until_ready(call(batch))  # compile this batch size
        for _ in range(repeats):
            for name, call in timed.items():
                start = time.perf_counter()
                jax.block_until_ready(call(batch))
                seconds[name].append(time.perf_counter() - start)
        for name, values in seconds.items():
            median = float(np.median(values))
            latency.setdefault(name, {})[f"batch_{b}"] = {"median_seconds": median, "images_per_second": b / median}
    return latency


def timed_label(label: str, threads: int) -> str:
    """The report's key for an artefact timed with `threads` LiteRT interpreter threads."""
    return f"{label}_threads{threads}"


def timed_name(timed: str, artefacts: dict[str, str]) -> str:
    """How a report names a timed model: the artefact (by the report's `artefacts`, label ->
    name), and the LiteRT interpreter's threads."""
    label, _, threads = timed.partition("_threads")
    return artefacts[label] + (f", {threads} interpreter thread{'s' if threads != '1' else ''}" if threads else "")


def fastest(latency: dict[str, dict]) -> dict[str, str]:
    """{batch key: the timed model with the most images/s at that batch size}."""
    batches = dict.fromkeys(batch for timings in latency.values() for batch in timings)
    return {batch: max((timed for timed in latency if batch in latency[timed]),
                       key=lambda timed: latency[timed][batch]["images_per_second"]) for batch in batches}


# What int8 speed depends on: VNNI (AVX-512 or AVX) fuses int8 multiply-adds; AMX adds int8
# matrix tiles. Recorded beside every int8 figure, since the same artefact is fast on one CPU
# and slow on the next.
INSTRUCTION_SETS = {"avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni"),
                    "amx": ("amx_int8",)}


def instruction_sets(cpu_flags: set[str]) -> dict[str, bool]:
    """Which of INSTRUCTION_SETS a CPU with `cpu_flags` (/proc/cpuinfo's names) has."""
    return {name: any(flag in cpu_flags for flag in flags) for name, flags in INSTRUCTION_SETS.items()}


def cpu_flags() -> set[str]:
    """This machine's CPU flags, from /proc/cpuinfo (empty where there is none)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def machine() -> dict:
    """What the timings depend on besides the artefacts: this machine's cores, JAX's platform,
    the instruction sets int8 speed depends on, and the load average when they were taken."""
    return {"cpu_count": os.cpu_count(), "platform": jax.devices()[0].platform,
            "instruction_sets": instruction_sets(cpu_flags()), "loadavg_at_end": list(os.getloadavg())}


def tradeoff_table(report: dict) -> str:
    """The report as a markdown table: per artefact (and LiteRT thread count), size, accuracy
    and agreement with the run's float32 logits on each split, batch-1 latency and batch-256
    throughput, and speed against the float32 StableHLO export."""
    splits = [name for name, row in report.items() if isinstance(row, dict) and "float32_accuracy" in row]
    base = report["latency"].get("float32")
    lines = ["| model | size | " + " | ".join(f"{s} accuracy (agreement)" for s in splits)
             + " | batch 1 | batch 256 | speed vs float32 (1 / 256) |", "|---" * (len(splits) + 5) + "|"]
    for timed, latency in report["latency"].items():
        label = timed.partition("_threads")[0]
        cells = [accuracy_cell(report[s], label) for s in splits]
        one, many = latency["batch_1"], latency.get("batch_256")
        size = report["bytes"][label] / 1024
        smaller = (f" ({report['bytes']['float32'] / report['bytes'][label]:.1f}x smaller)"
                   if "float32" in report["bytes"] else "")
        speed = "n/a" if not base else " / ".join(
            "-" if timing is None else f"{timing['images_per_second'] / base[batch]['images_per_second']:.2f}x"
            for batch, timing in (("batch_1", one), ("batch_256", many)))
        throughput = "-" if many is None else f"{many['images_per_second']:,.0f} img/s"
        lines.append(f"| {timed_name(timed, report['artefacts'])} | {size:,.0f} KiB{smaller} | " + " | ".join(cells)
                     + f" | {one['median_seconds'] * 1000:.2f} ms | {throughput} | {speed} |")
    return "\n".join(lines)


def fastest_lines(report: dict) -> str:
    """Which model to deploy on this machine for single requests and for large batches, and
    the instruction sets its int8 speed depends on."""
    has = report["machine"]["instruction_sets"]
    cpu = ", ".join(f"{name.upper()} {'yes' if present else 'no'}" for name, present in has.items())
    return "\n".join([f"fastest here ({cpu}):"] + [
        f"  batch {batch.removeprefix('batch_')}: {timed_name(timed, report['artefacts'])}, "
        f"{report['latency'][timed][batch]['images_per_second']:,.0f} img/s" for batch, timed in report["fastest"].items()])


def accuracy_cell(row: dict, label: str) -> str:
    """'accuracy (agreement)' of `label` on one split's row; '-' where it was not evaluated."""
    if f"{label}_accuracy" not in row:
        return "-"
    return f"{row[f'{label}_accuracy']:.2%}" + ("" if label == "float32" else f" ({row[f'{label}_agreement']:.2%})")
