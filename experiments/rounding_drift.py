"""How far float32 rounding differences grow along a training trajectory: the measurement
behind the tolerances of the tests that compare two ways of computing the same training
run (an epoch as one `lax.scan` against the step loop; 8 devices against 1).

Two computations of the same math in float32 differ by rounding when XLA orders a sum
differently (another fusion, another device count). That difference is one ulp-sized
nudge per operation; what a test sees is how the trajectory amplifies it. This script
measures, on the machine at hand:

1. The epoch scan against the step loop (simple_cnn, SGD, 4 steps; the setup of
   `tests/test_fast.py`): their difference after 1 step and after 4 steps; the spread of
   the step loop itself when the initial weights are nudged by one ulp (the pure
   rounding-amplification scale); and the difference a real bug makes (the same batches
   in the wrong order).
2. One step on 8 virtual devices against 1 device, with SGD and with Adam (the test's
   code: `jaxcifar.testing.one_step_on_eight_devices_and_on_one`), next to the step from
   one device's rows only (a missing gradient all-reduce).
3. `tests/fit_synthetic.py` (2 epochs, 16 steps) on 1 and on 8 virtual devices, with Adam
   and with SGD: the relative difference of the per-epoch train losses, next to the
   difference a one-ulp nudge of the initial weights makes on 1 device.

Writes experiments/results/rounding_drift.json.

    python experiments/rounding_drift.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import write_result

from jaxcifar import steps
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification
from jaxcifar.models import create_model
from jaxcifar.testing import one_step_on_eight_devices_and_on_one, synthetic_split, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def max_param_difference(a: steps.TrainState, b: steps.TrainState) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)))


def scan_against_loop(perturbations: int) -> dict:
    model, tx = create_model("simple_cnn"), optax.sgd(0.05, momentum=0.9)
    state = steps.create_state(model, jax.random.key(0))
    state = state.replace(opt_state=tx.init(state.params))
    config = tiny_config(augment={"crop_padding": 0, "flip": False})
    step = Classification(config, 10, model).train_step(tx, StageContext(steps_per_epoch=4))
    data = synthetic_split(128, 0)
    split = {"image": jnp.asarray(data.images), "label": jnp.asarray(data.labels)}
    rows = jnp.asarray(np.random.default_rng(0).permutation(128).reshape(4, 32))
    scan, jitted = jax.jit(steps.make_epoch_scan(step)), jax.jit(step)

    def loop(s, order):
        for r in order:
            s, _ = jitted(s, steps.gather_batch(split, r))
        return s

    reference = loop(state, rows)
    rng = np.random.default_rng(1)

    def nudged(p):  # every weight moved by one ulp, up or down at random
        return p * (1 + np.float32(2**-23) * rng.choice([-1, 1], p.shape).astype(np.float32))

    spread = [max_param_difference(loop(state.replace(params=jax.tree_util.tree_map(nudged, state.params)), rows),
                                   reference) for _ in range(perturbations)]
    return {
        "largest_weight": max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree_util.tree_leaves(reference.params)),
        "one_step_scan_vs_loop": max_param_difference(scan(state, split, rows[:1])[0], loop(state, rows[:1])),
        "four_steps_scan_vs_loop": max_param_difference(scan(state, split, rows)[0], reference),
        "four_steps_one_ulp_nudge_vs_loop": spread,
        "four_steps_wrong_batch_order_vs_loop": max_param_difference(loop(state, rows[::-1]), reference),
    }


def device_count_losses(optimizer: str, devices: int, nudge_seed: int | None = None) -> list[float]:
    extra = ["--config.lr=0.05"] if optimizer == "sgd" else []
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    if nudge_seed is not None:
        env["JAXCIFAR_TEST_NUDGE_SEED"] = str(nudge_seed)
    with tempfile.TemporaryDirectory() as workdir:
        out = subprocess.run(
            [sys.executable, os.path.join(REPO, "tests", "fit_synthetic.py"), workdir, "--config.eval_batch_size=40",
             f"--config.optimizer={optimizer}", *extra], capture_output=True, text=True, check=True, env=env)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["train_loss"]


def relative_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def main() -> None:
    devices = {}
    for optimizer in ("adam", "sgd"):
        one, eight = device_count_losses(optimizer, 1), device_count_losses(optimizer, 8)
        nudged = [relative_difference(one, device_count_losses(optimizer, 1, seed)) for seed in range(4)]
        devices[optimizer] = {"train_loss_1_device": one, "train_loss_8_devices": eight,
                              "max_relative_difference": relative_difference(one, eight),
                              "one_ulp_nudge_relative_differences": nudged}
    one_step = {name: one_step_on_eight_devices_and_on_one(optimizer)
                for name, optimizer in (("sgd", "sgd(0.05, momentum=0.9)"), ("adam", "adam(3e-3)"))}
    result = {"scan_vs_step_loop": scan_against_loop(perturbations=8), "one_step_eight_devices_vs_one": one_step,
              "eight_devices_vs_one": devices}
    print(json.dumps(result, indent=2))
    write_result("rounding_drift", result)


if __name__ == "__main__":
    main()
