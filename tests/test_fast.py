"""The `fast` recipe's parts: device-resident batches, alternating flip, whitening layer,
translate TTA."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import augment, checkpoint, config as config_lib, steps, train
from jaxcifar.models import create_model
from jaxcifar.models.airbench import whitening_kernel
from tests.conftest import tiny_config


def test_device_resident_batches_train_exactly_like_tf_data(tmp_path, tiny_data):
    results = {}
    for resident in (False, True):
        cfg = tiny_config(epochs=1, data={"device_resident": resident})
        results[resident] = train.fit(cfg, tmp_path / str(resident), data=tiny_data)
    a, _ = checkpoint.load_variables(tmp_path / "False", "latest")
    b, _ = checkpoint.load_variables(tmp_path / "True", "latest")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert results[True]["test_loss"] == results[False]["test_loss"]


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (64, 4, 4, 1)), jnp.uint8)
    index, key = jnp.arange(64), jax.random.key(0)
    flipped = lambda epoch: np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(  # noqa: E731
        np.asarray(augment.alternating_flip(key, images, index, jnp.asarray(epoch))), np.asarray(images))])
    e0, e1, e2 = flipped(0), flipped(1), flipped(2)
    assert 16 < e0.sum() < 48
    assert np.array_equal(e0, e2) and np.array_equal(e0, ~e1)


def test_whitening_kernel_decorrelates_patches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8, 8, 3)) @ np.array([[1, 0.7, 0.2], [0, 1, 0.5], [0, 0, 1]])
    kernel = whitening_kernel(x)
    out = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    feats = np.asarray(out)[..., :12].reshape(-1, 12)
    np.testing.assert_allclose(feats.T @ feats / len(feats), np.eye(12), atol=0.02)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])


def test_translate_tta_averages_shifted_views_and_is_exact_on_constant_images():
    model = create_model("airbench")
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    constant = jnp.ones((2, 32, 32, 3))  # flips and shifts of a constant image are itself
    plain = steps.predict_logits(model, variables, constant)
    np.testing.assert_allclose(steps.predict_logits(model, variables, constant, tta=True, translate=True), plain,
                               rtol=1e-5, atol=1e-6)
    noise = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    assert not np.allclose(steps.predict_logits(model, variables, noise, tta=True, translate=True),
                           steps.predict_logits(model, variables, noise, tta=True))


def test_fast_recipe_groups_freeze_whitening_and_boost_bn_biases():
    cfg = config_lib.load_recipe("fast")
    assert list(cfg.param_groups) == ["whiten_kernel", "whiten_bias", "bn_bias", "rest"]  # order survives
    params = create_model("airbench").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    from jaxcifar import optim

    labels = optim.param_labels(params, cfg.param_groups)
    assert labels["backbone"]["whiten"] == {"kernel": "whiten_kernel", "bias": "whiten_bias"}
    assert labels["backbone"]["group2"]["bn1"]["bias"] == "bn_bias"
    assert labels["head"]["kernel"] == "rest"
