"""Benchmark worker: builds one configuration, then times bursts of steps on request.

Protocol (JSON lines on the original stdout; everything the libraries print goes
to stderr): first ``{"steps_per_rep", "compile_s", "warm_rate"}`` once the target
is compiled and warmed up, then ``{"images", "seconds", "cpu_seconds"}`` for each ``run`` line
read from stdin, until ``quit`` or end of input.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import TextIO

from harness import Spec, Target

WARMUP_SECONDS = 1.5  # after compile: lets allocators and thread pools settle


def protocol_stream() -> TextIO:
    """Keep the real stdout for replies and send fd 1 (C libraries included) to stderr."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return reply


def timed(target: Target, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) for ``steps`` steps."""
    start, cpu = time.perf_counter(), time.process_time()
    target.run(steps)
    return time.perf_counter() - start, time.process_time() - cpu


def calibrate(target: Target, rep_seconds: float) -> tuple[int, float]:
    """Warm up for about WARMUP_SECONDS; size repetitions from the mean step time.

    The mean, not one step: a prefetching input pipeline serves its first batches from
    a buffer, which would make a single step look far too fast. A first step that
    alone outlasts the warm-up (ResNet-18, airbench) is the estimate, which keeps
    `make bench` short; it is pessimistic, so such repetitions get one step.
    """
    spent, steps = timed(target, 1)[0], 1
    if spent < WARMUP_SECONDS:
        spent, steps = 0.0, 0
        while spent < WARMUP_SECONDS:
            spent, steps = spent + timed(target, 1)[0], steps + 1
    step_seconds = spent / steps
    return max(1, round(rep_seconds / step_seconds)), target.images_per_step / step_seconds


def main() -> None:
    reply = protocol_stream()
    spec = Spec(**{**json.loads(sys.argv[1]), "xla_flags": tuple(json.loads(sys.argv[1])["xla_flags"])})
    rep_seconds = float(sys.argv[2])
    target = importlib.import_module(f"bench_{spec.framework}").build(spec)
    steps, warm_rate = calibrate(target, rep_seconds)
    reply.write(json.dumps({"steps_per_rep": steps, "compile_s": target.compile_s,
                            "warm_rate": warm_rate}) + "\n")
    for line in sys.stdin:
        if line.strip() != "run":
            break
        seconds, cpu_seconds = timed(target, steps)
        reply.write(json.dumps({"images": steps * target.images_per_step, "seconds": seconds,
                                "cpu_seconds": cpu_seconds}) + "\n")


if __name__ == "__main__":
    main()
