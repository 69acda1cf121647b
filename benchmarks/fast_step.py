"""Images/s of the `fast` (or `--recipe fast_muon`) recipe's real train step (Trainer's jitted step and device-resident
batches, so augmentation, lookahead and the optimizer are all in), on random uint8 data of
CIFAR-10's shape: one process per variant, since XLA flags are read at startup.

    .venv/bin/python benchmarks/fast_step.py                      # all variants
    .venv/bin/python benchmarks/fast_step.py --variants 1dev,2dev --steps 8
    .venv/bin/python benchmarks/fast_step.py --recipe fast_muon --variants 1dev

Variants: `1dev` (the recipe as `python -m jaxcifar.train --config fast` runs it), `2dev`
(the host split into 2 virtual devices, batch sharded), `no_lookahead`, `no_augment`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "1dev": ({}, 1),
    "2dev": ({}, 2),
    "no_lookahead": ({"lookahead_every": 0}, 1),
    "no_augment": ({"augment": {"crop_padding": 0, "flip": False, "alternating_flip": False}}, 1),
}


def measure(recipe: str, variant: str, steps: int) -> dict:
    """In this process: compile, then time `steps` steps twice; images/s of the faster rep."""
    import tempfile

    import jax
    import numpy as np

    from jaxcifar import config as config_lib, data as data_lib, train

    overrides, _ = VARIANTS[variant]
    cfg = config_lib.load_recipe(recipe)
    config_lib.apply_dict(cfg, overrides)
    rng = np.random.default_rng(0)
    split = lambda n: data_lib.ArraySplit(rng.integers(0, 256, (n, 32, 32, 3), np.uint8),  # noqa: E731
                                          rng.integers(0, 10, n).astype(np.int32))
    with tempfile.TemporaryDirectory() as workdir:
        trainer = train.Trainer(cfg, workdir, train.Data(split(50_000), split(1_000), 10))
        state, _ = trainer.restore_or_init()
        stage = trainer.stages[0]
        step = trainer.train_step_fn(stage, state.params)
        batches = trainer.batches(0, 0)
        t0 = time.time()
        state, metrics = step(state, next(batches))
        jax.block_until_ready(metrics)
        compile_s = time.time() - t0
        rates = []
        for _ in range(2):
            t0 = time.time()
            for _ in range(steps):
                state, metrics = step(state, next(batches))
            jax.block_until_ready(metrics)
            rates.append(steps * cfg.batch_size / (time.time() - t0))
        trainer.checkpointer.close()
    return {"recipe": recipe, "variant": variant, "devices": jax.device_count(), "images_per_second": max(rates),
            "rates": rates, "compile_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast", choices=("fast", "fast_muon"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.recipe, args.worker, args.steps)))
        return
    for variant in args.variants.split(","):
        devices = VARIANTS[variant][1]
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run([sys.executable, __file__, "--recipe", args.recipe, "--worker", variant,
                              "--steps", str(args.steps)], env=env,
                             capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{variant}: failed\n{out.stderr[-2000:]}",
              flush=True)


if __name__ == "__main__":
    main()
