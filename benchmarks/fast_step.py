"""Images/s of the `fast` (or `--recipe fast_muon`) recipe's real train step (Trainer's jitted step and device-resident
batches, so augmentation, lookahead and the optimizer are all in), on random uint8 data of
CIFAR-10's shape: one process per variant, since XLA flags are read at startup.

    .venv/bin/python benchmarks/fast_step.py                      # all variants
    .venv/bin/python benchmarks/fast_step.py --variants 1dev,2dev --steps 8
    .venv/bin/python benchmarks/fast_step.py --recipe fast_muon --variants 1dev

Variants: `1dev` (the recipe as `python -m jaxcifar.train --config fast` runs it), `2dev`
(the host split into 2 virtual devices, batch sharded), `no_lookahead`, `no_augment`, and
the formulations of `benchmarks/formulations.py` swapped into the model: `winograd`,
`nchw`, `tanh_gelu`, `recompute_gelu`. A formulation's worker builds the unchanged step and the swapped one
side by side: their first steps, from the same state and batch, give `numerics` (how far
apart the losses and the parameter updates are); then the two are timed in turns, and
`speed_ratio` is the swapped step's median images/s over the recipe's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> (config overrides, virtual devices, formulation swapped into the model or None:
# (the attribute of jaxcifar.models.airbench it replaces, the function of formulations.py)).
VARIANTS = {
    "1dev": ({}, 1, None),
    "2dev": ({}, 2, None),
    "no_lookahead": ({"lookahead_every": 0}, 1, None),
    "no_augment": ({"augment": {"crop_padding": 0, "flip": False, "alternating_flip": False}}, 1, None),
    "winograd": ({}, 1, ("Conv", "winograd_conv")),
    "nchw": ({}, 1, ("Conv", "nchw_conv")),
    "tanh_gelu": ({}, 1, ("gelu", "tanh_gelu")),
    "recompute_gelu": ({}, 1, ("gelu", "recompute_gelu")),
}


def formulation(swap: tuple[str, str]):
    """A context that swaps a formulation into jaxcifar.models.airbench, whose ConvGroup looks
    `Conv` and `gelu` up when traced. A convolution goes in as Flax's `conv_general_dilated`."""
    import functools
    from unittest import mock

    import formulations
    from jaxcifar.models import airbench, layers

    attribute, function = swap
    replacement = getattr(formulations, function)
    if attribute == "Conv":
        replacement = functools.partial(layers.Conv, conv_general_dilated=replacement)
    return mock.patch.object(airbench, attribute, replacement)


def random_data(train_images: int):
    """`data_lib.Data` of random uint8 images and labels of CIFAR-10's shape (1,000 to evaluate)."""
    import numpy as np

    from jaxcifar import data as data_lib

    rng = np.random.default_rng(0)
    split = lambda n: data_lib.ArraySplit(rng.integers(0, 256, (n, 32, 32, 3), np.uint8),  # noqa: E731
                                          rng.integers(0, 10, n).astype(np.int32))
    return data_lib.Data(split(train_images), split(1_000), 10)


def prime(config) -> dict:
    """`config`'s compiled first-stage step on random data, primed by its first step (which
    compiles it): the step, its state and batches, that first step's loss, parameter update
    and seconds."""
    import jax
    import numpy as np

    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64))  # noqa: E731
                                        for x in jax.tree_util.tree_leaves(tree)])
    from jaxcifar import stages

    first = stages.build_step(config, random_data(50_000))
    state, step, batches = first.state, first.train_step, first.stream.batches(0, 0)
    before = flat(state.params)
    t0 = time.time()
    state, metrics = step(state, next(batches))
    loss = float(metrics["loss_sum"] / metrics["count"])
    return {"step": step, "state": state, "batches": batches, "loss": loss, "compile_s": time.time() - t0,
            "update": flat(state.params) - before}  # copied now: the next step donates the state


def images_per_second(primed: dict, steps: int, batch_size: int) -> float:
    import jax

    t0 = time.time()
    for _ in range(steps):
        primed["state"], metrics = primed["step"](primed["state"], next(primed["batches"]))
    jax.block_until_ready(metrics)
    return steps * batch_size / (time.time() - t0)


def measure(recipe: str, variant: str, steps: int, reps: int) -> dict:
    """In this process: the recipe's step (and, for a formulation, the same step with it
    swapped in, from the same state and batches), compiled, then timed for `steps` steps
    `reps` times, the two in turns so that both see the same machine."""
    import jax
    import numpy as np

    from jaxcifar import config as config_lib

    overrides, _, swap = VARIANTS[variant]
    cfg = config_lib.load_recipe(recipe)
    config_lib.apply_dict(cfg, overrides)
    contenders = {"recipe": prime(cfg)}
    if swap is not None:
        with formulation(swap):  # the swapped step is traced, hence built, inside
            contenders[variant] = prime(cfg)
    rates = {name: [] for name in contenders}
    for _ in range(reps):
        for name, primed in contenders.items():
            rates[name].append(images_per_second(primed, steps, cfg.batch_size))
    measured = list(contenders)[-1]
    result = {"recipe": recipe, "variant": variant, "devices": jax.device_count(),
              "images_per_second": max(rates[measured]), "rates": rates[measured],
              "compile_s": contenders[measured]["compile_s"]}
    if swap is not None:
        reference, swapped = contenders["recipe"], contenders[variant]
        result.update(
            recipe_rates=rates["recipe"], speed_ratio=float(np.median(rates[variant]) / np.median(rates["recipe"])),
            numerics={"loss": reference["loss"], "loss_difference": abs(swapped["loss"] - reference["loss"]),
                      "update_relative_l2": float(np.linalg.norm(swapped["update"] - reference["update"])
                                                  / np.linalg.norm(reference["update"]))})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast", choices=("fast", "fast_muon"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=2, help="timed rounds of --steps steps (images/s: the best)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.recipe, args.worker, args.steps, args.reps)))
        return
    for variant in args.variants.split(","):
        devices = VARIANTS[variant][1]
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run([sys.executable, __file__, "--recipe", args.recipe, "--worker", variant,
                              "--steps", str(args.steps), "--reps", str(args.reps)], env=env,
                             capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{variant}: failed\n{out.stderr[-2000:]}",
              flush=True)


if __name__ == "__main__":
    main()
