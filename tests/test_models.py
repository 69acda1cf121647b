"""Model registry and the model contract the training code relies on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar.models import MODEL_NAMES, create_model
from jaxcifar.models.layers import max_pool_2x2

NUM_CLASSES = 7
# numpy, not jax.random: eager jax.random compiles a program per shape (~1 s each on CPU).
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((2, 32, 32, 3)), jnp.float32)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model_and_vars(request):
    """Init each model once per module; init dominates the runtime on CPU."""
    model = create_model(request.param, num_classes=NUM_CLASSES)
    return model, model.init(jax.random.PRNGKey(0), X, train=False)


def test_registry_names():
    assert set(MODEL_NAMES) == {"simple_cnn", "resnet18", "resnet18_imagenet", "resnet50", "airbench"}


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18_imagenet"):
        create_model("vgg16")


def test_output_shapes_and_top_level_keys(model_and_vars):
    model, variables = model_and_vars
    assert set(variables["params"]) == {"backbone", "head"}
    eval_logits = model.apply(variables, X, train=False)
    train_logits, _ = model.apply(variables, X, train=True, mutable=["batch_stats"])
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, NUM_CLASSES)
        assert logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))


def test_frozen_backbone_keeps_batch_stats(model_and_vars):
    model, variables = model_and_vars
    if "batch_stats" not in variables:
        pytest.skip("model has no BatchNorm")
    _, frozen = model.apply(
        variables, X, train=True, freeze_backbone=True, mutable=["batch_stats"]
    )
    _, trained = model.apply(variables, X, train=True, mutable=["batch_stats"])
    old = jax.tree.leaves(variables["batch_stats"])
    assert all(np.array_equal(a, b) for a, b in zip(old, jax.tree.leaves(frozen["batch_stats"])))
    assert any(not np.allclose(a, b) for a, b in zip(old, jax.tree.leaves(trained["batch_stats"])))


def test_bn_paths_contain_bn(model_and_vars):
    """Path-regex rules like ``.*bn.*`` must find every BatchNorm parameter."""
    _, variables = model_and_vars
    if "batch_stats" not in variables:
        pytest.skip("model has no BatchNorm")
    stat_paths = {
        "/".join(k.key for k in path[:-1])
        for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
    }
    assert stat_paths and all("bn" in p.rsplit("/", 1)[-1] for p in stat_paths)


def test_simple_cnn_matches_keras_param_count():
    model = create_model("simple_cnn")
    variables = model.init(jax.random.PRNGKey(0), X, train=False)
    counts = jax.tree.map(lambda a: a.size, variables["params"])
    assert sum(jax.tree.leaves(counts["backbone"])) == 896 + 18_496 + 73_856
    assert sum(jax.tree.leaves(counts["head"])) == 5_130
    assert variables["params"]["head"]["kernel"].shape == (512, 10)


def test_resnet_computes_in_its_dtype_with_float32_parameters_and_logits():
    model = create_model("resnet18_imagenet", dtype=jnp.bfloat16)
    variables = model.init(jax.random.PRNGKey(0), X, train=False)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    logits = model.apply(variables, X, train=False)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize("size", [(8, 8), (9, 7), (15, 13)])
def test_fast_max_pool_matches_nn_max_pool(size):
    x = jnp.asarray(RNG.standard_normal((2, *size, 3)), jnp.float32)
    reference = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
    weights = jnp.asarray(RNG.standard_normal(reference(x).shape), jnp.float32)
    grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * weights))(x)
    np.testing.assert_array_equal(grad(max_pool_2x2), grad(reference))


def test_frozen_backbone_gets_no_gradient():
    model = create_model("simple_cnn")
    variables = model.init(jax.random.PRNGKey(0), X, train=False)
    loss = lambda p: jnp.sum(model.apply({"params": p}, X, train=True, freeze_backbone=True))
    grads = jax.grad(loss)(variables["params"])
    assert all(not np.any(g) for g in jax.tree.leaves(grads["backbone"]))
    assert any(np.any(g) for g in jax.tree.leaves(grads["head"]))
