"""Which XLA:CPU operations dominate jaxcifar's train step: a per-op time table.

Runs a few steps under ``jax.profiler`` with ``--xla_cpu_enable_xprof_traceme`` (one
trace event per executed thunk), sums the events by HLO instruction name over all
threads, and labels each instruction from the optimised HLO (convolution forward /
input-gradient / weight-gradient, dot, transpose, reduce, elementwise). The times
are CPU time per step; their sum over the wall time per step shows how well the
two cores are used.

    .venv/bin/python benchmarks/profile_step.py --net simple_cnn --devices 1 \\
        [--flags=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution]

Reads the trace with ``jax._src.lib._profile_data`` (private, but it ships with
jaxlib and needs no TensorBoard plugin).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from harness import Spec

_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) ")
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")
# Heaviest kind first: a fusion is labelled by the heaviest op it contains.
_KIND_ORDER = ("convolution", "dot", "reduce-window", "select-and-scatter", "reduce", "transpose",
               "copy", "pad", "dynamic-slice", "gather", "scatter")


def parse_hlo(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({computation: its instruction lines}, {entry instruction name: its line})."""
    computations: dict[str, list[str]] = collections.defaultdict(list)
    entry: dict[str, str] = {}
    current, in_entry = "", False
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            header = _HEADER.match(line)
            current, in_entry = (header.group(1) if header else ""), line.startswith("ENTRY")
            continue
        match = _INSTR.match(line)
        if match:
            computations[current].append(line)
            if in_entry:
                entry[match.group(1)] = line
    return computations, entry


def describe(line: str, computations: dict[str, list[str]]) -> tuple[str, str]:
    """(category, short description) of one entry instruction."""
    _, shape, opcode, rest = _INSTR.match(line).groups()
    body = [line]
    called = re.search(r"calls=%([\w.-]+)", rest)
    if called:
        body = computations.get(called.group(1), body)
    ops = {_INSTR.match(b).group(3): b for b in body if _INSTR.match(b)}
    kind = next((k for k in _KIND_ORDER if k in ops), "elementwise" if called else opcode)
    backend = "ynn " if "__ynn_fusion" in rest else ("xnn " if "__xnn_fusion" in rest else "")
    if kind == "convolution":
        kind = _conv_kind(ops["convolution"])
    return kind, f"{backend}{opcode} {shape}"


def _conv_kind(line: str) -> str:
    """Forward, input-gradient or weight-gradient convolution, from metadata and window.

    Forward convolutions keep JAX's ``op_name`` metadata (without ``transpose(``);
    the backward ones are rebuilt by XLA's conv canonicalisation without it. The
    weight gradient slides a window as large as the activation (> 3x3 here), the
    input gradient one as small as the kernel. A heuristic, good for 3x3/1x1 kernels.
    """
    if 'op_name="' in line and "transpose(" not in line:
        return "conv fwd"
    window = _WINDOW.search(line)
    large = window is not None and max(int(window.group(1)), int(window.group(2))) > 3
    return "conv wgrad" if large else "conv dgrad"


def thunk_times(trace_dir: str) -> dict[str, float]:
    """Total event time in ms by event name, over every thread of the newest trace."""
    from jax._src.lib import _profile_data

    path = max(Path(trace_dir).rglob("*.xplane.pb"), key=os.path.getmtime)
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in _profile_data.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            for event in line.events:
                totals[event.name] += event.duration_ns / 1e6
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="simple_cnn")
    parser.add_argument("--batch", type=int, default=0, help="0: the net's benchmark batch")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--flags", default="", help="extra XLA_FLAGS")
    parser.add_argument("--options", default="{}", help='bench_jax options as JSON, e.g. {"conv": "barrier"}')
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    batch = args.batch or {"simple_cnn": 256, "resnet18": 128, "airbench": 512}[args.net]
    spec = Spec("profile", "jax", args.net, batch, args.devices, tuple(args.flags.split()),
                {"augment": False, **json.loads(args.options)})
    os.environ.update(spec.env())
    os.environ["XLA_FLAGS"] += " --xla_cpu_enable_xprof_traceme=true"

    import bench_jax
    import jax

    compiled, state, data, _ = bench_jax.compile_step(spec)
    computations, entry = parse_hlo(compiled.runtime_executable().hlo_modules()[0].to_string())
    for _ in range(2):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    trace_dir = tempfile.mkdtemp(prefix="jaxcifar-trace-")
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, _ = compiled(state, data)
    jax.block_until_ready(state)
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    jax.profiler.stop_trace()

    per_op = {name: ms / args.steps for name, ms in thunk_times(trace_dir).items() if name in entry}
    by_kind: dict[str, float] = collections.defaultdict(float)
    rows = []
    for name, ms in per_op.items():
        kind, text = describe(entry[name], computations)
        by_kind[kind] += ms
        rows.append((ms, name, kind, text))
    total = sum(per_op.values())
    print(f"{args.net} batch {batch}, {args.devices} device(s), flags {args.flags or '-'}, options {args.options}")
    print(f"wall {wall_ms:.1f} ms/step ({batch / wall_ms * 1e3:.0f} img/s); op CPU time {total:.1f} ms/step "
          f"(= {total / wall_ms:.2f} cores busy, with profiler overhead)")
    print("\nby category (CPU ms/step, share):")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:20s} {ms:8.1f}  {ms / total:6.1%}")
    print(f"\ntop {args.top} ops:")
    for ms, name, kind, text in sorted(rows, reverse=True)[: args.top]:
        print(f"  {ms:8.1f} ms  {kind:14s} {name:32s} {text[:90]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
