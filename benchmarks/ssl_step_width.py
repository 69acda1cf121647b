"""Seconds per SimCLR step (two views of a 512-image batch) of the `ssl_simclr` recipe at the
backbone widths it could use, side by side in one process: the measurement behind the
recipe's choice of a half-width `fast` network.

    .venv/bin/python benchmarks/ssl_step_width.py               # writes benchmarks/results/ssl_step_width.json
    .venv/bin/python benchmarks/ssl_step_width.py --steps 2 --out /tmp/w.json

Each width's step is built by `stages.build_stage`, as the training loop builds it, on random
uint8 images; the widths are timed in turns (round robin) so that a change in the machine's
load falls on all of them alike, and the median step of each is reported.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

from harness import machine_info

REPO = pathlib.Path(__file__).resolve().parents[1]

WIDTHS = {"full (fast)": (64, 256, 256), "half (ssl_simclr)": (32, 128, 128), "narrow": (32, 64, 128)}
TRAIN_IMAGES = 50_000


def compile_width(widths: tuple[int, ...], batch_size: int):
    """(jitted step, state, batch) of `ssl_simclr` with the backbone's widths set to `widths`."""
    import jax
    import numpy as np

    from jaxcifar import config as config_lib, methods, stages, steps

    config = config_lib.load_recipe("ssl_simclr")
    config.batch_size = batch_size
    config.model_kwargs.widths = widths
    objective = methods.create(config, num_classes=10)
    state = steps.create_state(objective.model, jax.random.PRNGKey(0))
    steps_per_epoch = TRAIN_IMAGES // batch_size
    built = stages.build_stage(objective, config, stages.plan_stages(config)[0], state.params, steps_per_epoch)
    state = state.replace(opt_state=built.tx.init(state.params))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (batch_size, 32, 32, 3), np.uint8),
             "label": np.zeros(batch_size, np.int32), "index": np.arange(batch_size, dtype=np.int32)}
    step = jax.jit(built.train_step, donate_argnums=0)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return step, state, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per width (after one compiling step)")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ssl_step_width.json"))
    args = parser.parse_args(argv)

    import jax


    compiled = {name: compile_width(widths, args.batch_size) for name, widths in WIDTHS.items()}
    seconds = {name: [] for name in WIDTHS}
    for _ in range(args.steps):
        for name, (step, state, batch) in compiled.items():
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            seconds[name].append(time.perf_counter() - start)
            compiled[name] = (step, state, batch)
    steps_per_epoch = TRAIN_IMAGES // args.batch_size
    result = {
        "command": "python benchmarks/ssl_step_width.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
        "widths": {name: {"widths": list(WIDTHS[name]), "step_seconds": seconds[name],
                          "median_step_seconds": round(statistics.median(seconds[name]), 3),
                          "epoch_seconds": round(statistics.median(seconds[name]) * steps_per_epoch, 1)}
                   for name in WIDTHS}}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["widths"].items():
        print(f"{name:18s} {row['widths']}: {row['median_step_seconds']:.2f} s/step, {row['epoch_seconds']:.0f} s/epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
