"""Global magnitude pruning through Optax (jaxcifar/prune.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import checkpoint, models, optim, peft, prune, runs, testing, train
from jaxcifar import data as data_lib
from jaxcifar import config as config_lib
from jaxcifar.testing import synthetic_split, tiny_config


def test_the_mask_keeps_the_largest_magnitudes_across_all_leaves():
    params = {"a": jnp.array([[0.1, -5.0], [0.3, 2.0]]), "b": jnp.array([[-0.2, 4.0, 0.05]]), "bias": jnp.array([0.0])}
    prunable = {"a": True, "b": True, "bias": False}
    mask = prune.global_magnitude_mask(params, prunable, jnp.float32(4 / 7))  # 4 of the 7 kernel weights
    np.testing.assert_array_equal(mask["a"], [[False, True], [False, True]])
    np.testing.assert_array_equal(mask["b"], [[False, True, False]])
    assert bool(mask["bias"])  # not prunable: kept whatever its value


def test_the_ramp_is_cubic_and_then_holds():
    schedule = prune.sparsity_schedule(0.8, ramp_steps=10)
    assert [float(schedule(t)) for t in (0, 5, 10, 20)] == pytest.approx([0.0, 0.8 * (1 - 0.5 ** 3), 0.8, 0.8])


def test_pruned_weights_stay_zero_despite_momentum_and_weight_decay():
    params = {"kernel": jax.random.normal(jax.random.key(0), (8, 16)), "bias": jnp.ones(16)}
    prunable = {"kernel": True, "bias": False}
    inner = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9))
    tx = prune.magnitude_pruning(inner, prunable, prune.sparsity_schedule(0.75, 6), every_steps=2)
    state = tx.init(params)
    grad = jax.grad(lambda p: jnp.sum((p["kernel"] - 3.0) ** 2) + jnp.sum(p["bias"] ** 2))
    pruned_at = {}
    for step in range(1, 13):
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        zeros = np.asarray(params["kernel"]) == 0
        for index in zip(*np.nonzero(zeros)):
            pruned_at.setdefault(index, step)
        assert all(zeros[i] for i in pruned_at), f"a pruned weight moved again at step {step}"
    assert prune.sparsity_of(params, prunable) == 0.75  # 96 of 128, exactly, after the ramp
    assert np.all(np.asarray(params["bias"]) != 0)


def pruning_config(**fields):
    return tiny_config(epochs=2, prune={"sparsity": 0.75, "ramp_fraction": 0.5, "every_steps": 2}, **fields)


def data():
    return data_lib.Data(synthetic_split(256, 0), synthetic_split(40, 1), 10)


def test_a_pruning_run_reaches_its_sparsity_and_resumes_exactly(tmp_path):
    straight, _ = testing.assert_resumes_exactly(pruning_config(), tmp_path, data())
    kernels = {path: leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
        checkpoint.load_variables(tmp_path / "straight", "latest")[0]["params"]) if leaf.ndim > 1}
    zeros = sum(int(np.sum(k == 0)) for k in kernels.values())
    assert straight["sparsity"] == pytest.approx(0.75, abs=1e-4)
    assert zeros == pytest.approx(0.75 * sum(k.size for k in kernels.values()), abs=1)


def test_pruning_refuses_averaged_weights():
    for fields in ({"lookahead_every": 5}, {"ema_decay": 0.99}):
        with pytest.raises(ValueError, match="prune.sparsity > 0 cannot be combined"):
            config_lib.validate(pruning_config(**fields), 1)


def test_removing_channels_that_contribute_nothing_keeps_the_logits():
    # Channels whose BatchNorm has gamma = beta = 0 output relu(0) = 0: removing them must
    # leave the network's function unchanged, which checks every slice (conv1, bn1, conv2).
    model = models.create_model("resnet18", 10, width=8)
    images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(1), images, train=False))
    params = peft.flat(variables["params"])
    rng = np.random.default_rng(0)
    for block in [p.removesuffix("/bn1/scale") for p in params if p.endswith("/bn1/scale") and "layer" in p]:
        gamma = rng.uniform(0.5, 2.0, params[f"{block}/bn1/scale"].shape).astype(np.float32)
        dead = rng.random(gamma.shape) < 0.5
        params[f"{block}/bn1/scale"] = np.where(dead, 0.0, gamma)
        params[f"{block}/bn1/bias"] = np.where(dead, 0.0, rng.normal(size=gamma.shape)).astype(np.float32)
    variables["params"] = peft.traverse_util.unflatten_dict(params, sep="/")
    dead_fraction = np.mean(np.concatenate([params[p] == 0 for p in params if p.endswith("bn1/scale") and "layer" in p]))
    widths, slim = prune.slimmed(variables, float(dead_fraction))
    assert sum(widths) < sum(8 * 2 ** (i // 2) for i in range(8))
    narrow = models.create_model("resnet18", 10, width=8, block_widths=widths)
    np.testing.assert_allclose(narrow.apply(slim, images, train=False), model.apply(variables, images, train=False),
                               atol=1e-5)


def test_a_run_with_channels_removed_is_narrower_and_opens_like_any_run(tmp_path):
    resnet = dict(model="resnet18", model_kwargs={"width": 8, "stage_sizes": (1, 1)})  # two blocks: widths 8, 16
    train.fit(tiny_config(**resnet, epochs=1), tmp_path / "dense", data=data())
    summary = train.fit(tiny_config(**resnet, epochs=1, prune={"channels": 0.5}), tmp_path / "slim", data=data(),
                        init_from=str(tmp_path / "dense"))
    dense = runs.load_run(tmp_path / "dense")
    slim = runs.load_run(tmp_path / "slim")
    widths = slim.config.model_kwargs.block_widths
    assert sum(widths) == (8 + 16) // 2
    assert summary["parameters"] < 0.8 * optim.count_parameters(dense.variables["params"])
    assert slim.logits(synthetic_split(8, 3).images).shape == (8, 10)
    with pytest.raises(ValueError, match="pass --init_from"):
        train.fit(tiny_config(**resnet, epochs=1, prune={"channels": 0.5}), tmp_path / "none", data=data())
