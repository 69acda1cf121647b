"""Muon (optim.muon) and the `fast_muon` recipe: the step is airbench94_muon's, wrong
groupings are refused with the fix, and the recipe trains and resumes like every other."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import optim, testing
from jaxcifar import config as config_lib
from jaxcifar.models import create_model
from jaxcifar.testing import tiny_config


def airbench_muon_reference(kernel_hwio, grads, lr, momentum, ns_steps):
    """airbench94_muon's `Muon.step`, literally, in float64 NumPy on PyTorch's (out, in, kh, kw)
    layout: buf = m buf + g; g = g + m buf; p *= sqrt(len(p)) / |p|; p -= lr NS(g as (out, -1))."""
    p = np.asarray(kernel_hwio, np.float64).transpose(3, 2, 0, 1)
    buf = np.zeros_like(p)
    for g_hwio in grads:
        g = np.asarray(g_hwio, np.float64).transpose(3, 2, 0, 1)
        buf = momentum * buf + g
        g = g + momentum * buf
        p = p * (np.sqrt(len(p)) / np.linalg.norm(p))
        x = g.reshape(len(g), -1)
        x = x / (np.linalg.norm(x) + 1e-7)
        wide = x.shape[0] <= x.shape[1]
        x = x if wide else x.T
        for _ in range(ns_steps):
            a = x @ x.T
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
        p = p - lr * (x if wide else x.T).reshape(p.shape)
    return p.transpose(2, 3, 1, 0)


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (3, 3, 16, 4)], ids=["wide", "tall"])
def test_muon_matches_airbench_muon_step_by_step(shape):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    stage = config_lib.recipe(muon_momentum=0.6, muon_ns_steps=3)
    tx = optim.muon(stage, lambda step: 0.24)
    params = {"kernel": jnp.asarray(kernel)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"kernel": jnp.asarray(g)}, state, params)
        params = jax.tree_util.tree_map(jnp.add, params, updates)
    expected = airbench_muon_reference(kernel, grads, 0.24, 0.6, 3)
    # float32 against float64: 2.1e-7 measured on an AVX2 CPU for both shapes; 2e-5 leaves 100x margin.
    np.testing.assert_allclose(np.asarray(params["kernel"]), expected, atol=2e-5)


def test_muon_on_a_bias_is_refused_naming_the_parameter():
    config = tiny_config(optimizer="muon", weight_decay=0.0)
    params = create_model("simple_cnn").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    (_, stage), = config_lib.stage_plan(config)
    with pytest.raises(ValueError, match=r"Muon updates matrices.*bias \(32,\).*own param_groups rule"):
        optim.make_optimizer(stage, config.param_groups, params, 10)


def test_muon_with_weight_decay_is_refused_with_the_fix():
    config = config_lib.load_recipe("fast_muon")
    config.weight_decay_multipliers.filters = 1.0
    with pytest.raises(ValueError, match=r"group 'filters' uses muon.*weight_decay_multipliers.filters=0"):
        config_lib.validate(config, 1)
    config.group_optimizers.filters = "lion"
    with pytest.raises(ValueError, match=r"group_optimizers=.*'lion' \(group 'filters'\) is not an optimizer: use sgd"):
        config_lib.validate(config, 1)


def small_fast_muon() -> config_lib.ml_collections.ConfigDict:
    config = config_lib.load_recipe("fast_muon")
    config.batch_size, config.eval_batch_size, config.epochs, config.log_every_steps = 64, 77, 2, 2
    config.model_kwargs.widths = (8, 16, 16)
    config.group_epochs.whiten_bias = 1
    return config


def test_fast_muon_trains_and_resumes_bit_identically(tmp_path, tiny_data):
    straight, _ = testing.assert_resumes_exactly(small_fast_muon(), tmp_path, tiny_data)
    assert straight["steps"] == 2 * (256 // 64)
