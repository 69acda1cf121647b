import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar import augment
from jaxcifar.config import default_config


def test_normalize_standardises_with_cifar_statistics():
    x = jnp.asarray(np.array(augment.CIFAR10_MEAN), jnp.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(augment.normalize(x), 0.0, atol=1e-5)
    assert float(augment.normalize(jnp.full((1, 1, 1, 3), 255, jnp.uint8), "unit").max()) == 1.0
    imagenet_mean = jnp.asarray(np.array(augment.IMAGENET_MEAN), jnp.float32).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(augment.normalize(imagenet_mean, "imagenet"), 0.0, atol=1e-5)


def test_random_crop_is_a_shift_of_the_zero_padded_image():
    images = jnp.asarray(np.random.default_rng(0).integers(1, 255, (16, 8, 8, 3)), jnp.uint8)
    out = augment.random_crop(jax.random.key(0), images, padding=2)
    assert out.shape == images.shape
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for img, crop in zip(padded, np.asarray(out)):
        assert any(np.array_equal(img[i:i + 8, j:j + 8], crop) for i in range(5) for j in range(5))
    assert not np.array_equal(np.asarray(out), np.asarray(images))


def test_flip_mirrors_about_half_the_images():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (200, 4, 4, 1)), jnp.uint8)
    out = np.asarray(augment.random_flip(jax.random.key(1), images))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, np.asarray(images))]
    kept = [np.array_equal(o, i) for o, i in zip(out, np.asarray(images))]
    assert all(f or k for f, k in zip(flipped, kept)) and 60 < sum(flipped) < 140


def test_rotate_zoom_is_identity_at_zero_and_changes_images_otherwise():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)), jnp.uint8)
    same = augment.random_rotate_zoom(jax.random.key(0), images, 0.0, 0.0)
    np.testing.assert_allclose(same, images.astype(jnp.float32), atol=1e-3)
    moved = augment.random_rotate_zoom(jax.random.key(0), images, 0.1, 0.2)
    assert float(jnp.abs(moved - images).mean()) > 5


def test_augment_is_deterministic_in_its_key():
    cfg = default_config().augment
    cfg.rotation, cfg.zoom = 0.05, 0.1
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)), jnp.uint8)
    a = augment.augment(jax.random.key(3), images, cfg)
    assert a.dtype == jnp.float32 and a.shape == images.shape
    np.testing.assert_array_equal(a, augment.augment(jax.random.key(3), images, cfg))
    assert not np.array_equal(a, augment.augment(jax.random.key(4), images, cfg))
