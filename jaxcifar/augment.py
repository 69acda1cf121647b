"""Augmentation and normalisation as pure JAX functions, run on the device inside the
jitted train step.

Why on the device and not in tf.data: (1) one implementation serves both the tf.data
path and the device-resident `fast` path; (2) randomness comes from the step's PRNG
key, so augmentation is a pure function of (seed, step) and a resumed run replays it
exactly; (3) uint8 batches are 4x cheaper to move than float32; (4) on a 2-core CPU a
per-example tf.data map competes with XLA for the same cores and is slower than one
vectorised XLA kernel.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections

from jaxcifar.augment_fields import NORMALIZATIONS

# Canonical CIFAR-10 train-set statistics (../shared/README.md; checked by tests/test_data.py).
CIFAR10_MEAN = (125.3069, 122.9504, 113.8654)
CIFAR10_STD = (62.9932, 62.0887, 66.7049)


# ImageNet statistics on the 0..255 scale: what torchvision/timm-pretrained backbones expect.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize(images: jax.Array, normalization: str = "cifar10") -> jax.Array:
    """uint8 NHWC (or float on the 0..255 scale) -> float32 model input: standardised with
    CIFAR-10 or ImageNet channel statistics, or scaled to [0, 1] ('unit', the seed's x/255)."""
    x = images.astype(jnp.float32)
    if normalization == "unit":
        return x / 255.0
    if normalization == "cifar10":
        return (x - jnp.asarray(CIFAR10_MEAN)) / jnp.asarray(CIFAR10_STD)
    if normalization == "imagenet":
        return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    raise ValueError(f"Unknown normalization {normalization!r}; use one of {NORMALIZATIONS}.")


def resize(images: jax.Array, size: int) -> jax.Array:
    """NHWC images -> (n, size, size, c), on the 0..255 scale, for a dataset whose images
    have another size than the run's `data.image_size`: bilinear, antialiased when shrinking
    (it averages the whole footprint), the filter of Pillow's BILINEAR that image files get
    on the host (image_files.py; the two agree within one grey level). Images already of
    that size are returned as they are, so the CIFAR path computes nothing extra."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images.astype(jnp.float32), (n, size, size, c), method="bilinear", antialias=True)


def model_input(images: jax.Array, size: int, normalization: str) -> jax.Array:
    """Eval-time input: uint8 images of any one size -> normalised float32 (n, size, size, c).
    The one inference path (steps.make_forward: eval step, runs.Run, export, serve) uses it."""
    return normalize(resize(images, size), normalization)


def random_crop(key: jax.Array, images: jax.Array, padding: int, mode: str = "constant") -> jax.Array:
    """Crop each image at a random offset from a padded copy: zero padding is the classic
    pad-4 crop, `reflect` is airbench's random translate."""
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1], images)


def random_rotate_zoom(key: jax.Array, images: jax.Array, rotation: float, zoom: float) -> jax.Array:
    """Keras-style RandomRotation(rotation) and RandomZoom(zoom): one random affine map per
    image about its centre, bilinear sampling, reflect fill (Keras' default fill_mode)."""
    n, h, w, c = images.shape
    k_angle, k_zoom = jax.random.split(key)
    angles = jax.random.uniform(k_angle, (n,), minval=-rotation, maxval=rotation) * 2 * jnp.pi
    scales = 1.0 + jax.random.uniform(k_zoom, (n,), minval=-zoom, maxval=zoom)
    rows, cols = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

    def warp(img: jax.Array, angle: jax.Array, scale: jax.Array) -> jax.Array:
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        src_r = (cos * rows - sin * cols) * scale + (h - 1) / 2
        src_c = (sin * rows + cos * cols) * scale + (w - 1) / 2
        sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode="mirror")
        return jax.vmap(sample, in_axes=-1, out_axes=-1)(img)

    return jax.vmap(warp)(images.astype(jnp.float32), angles, scales)


def alternating_flip(run_key: jax.Array, images: jax.Array, index: jax.Array, epoch: jax.Array) -> jax.Array:
    """airbench's derandomised flip: each example has a fixed random parity (from the run's
    key and its index) and is mirrored in every other epoch, so consecutive epochs always
    see both orientations."""
    parity = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(run_key, i)))(index)
    flip = jnp.logical_xor(parity, epoch % 2 == 1)[:, None, None, None]
    return jnp.where(flip, images[:, :, ::-1], images)


def augment(key: jax.Array, images: jax.Array, cfg: ml_collections.ConfigDict, run_key: jax.Array | None = None,
            index: jax.Array | None = None, epoch: jax.Array | None = None) -> jax.Array:
    """The train-time input transform: uint8 batch in, normalised float32 batch out.
    `key` changes every step; `run_key`, the examples' `index` and `epoch` are needed
    only for the alternating flip."""
    k_crop, k_flip, k_affine = jax.random.split(key, 3)
    x = images
    if cfg.crop_padding:
        x = random_crop(k_crop, x, cfg.crop_padding, cfg.pad_mode)
    if cfg.flip and cfg.alternating_flip:
        x = alternating_flip(run_key, x, index, epoch)
    elif cfg.flip:
        x = random_flip(k_flip, x)
    if cfg.rotation or cfg.zoom:
        # Interpolated pixels leave uint8; normalise() only needs a 0..255 scale.
        x = random_rotate_zoom(k_affine, x, cfg.rotation, cfg.zoom)
    return normalize(x, cfg.normalization)


# ----- self-supervised views (SimCLR's augmentation, as solo-learn and lightly use it on CIFAR) -----

def _resize_matrix(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """(out_size, in_size) bilinear weights that resample the window [start, start + length)
    of an axis of `in_size` pixels to `out_size` pixels (pixel centres at i + 0.5, edges
    clamped). Written as a matrix so a batch of crops is two batched matmuls. No
    antialiasing: a window is resampled to about its own size or larger (the small crops of
    methods/multicrop.py are taken at their native resolution), never shrunk by much."""
    centres = start + (jnp.arange(out_size) + 0.5) * length / out_size - 0.5
    centres = jnp.clip(centres, 0.0, in_size - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - jnp.arange(in_size)[None, :]))


def random_resized_crop(key: jax.Array, images: jax.Array, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), size: int | None = None) -> jax.Array:
    """torchvision's RandomResizedCrop to `size` x `size` pixels (default: the input's size):
    a window of a random area fraction in `scale` and aspect ratio in `ratio` (log-uniform),
    at a random position, resized bilinearly. A window that does not fit is clipped to the
    image (torchvision retries ten times instead; clipping changes the area distribution only
    near scale 1). Takes float images on the 0..255 scale."""
    n, h, w, _ = images.shape
    out_h, out_w = (h, w) if size is None else (size, size)
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1]) * h * w
    log_ratio = jax.random.uniform(k_ratio, (n,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    crop_h = jnp.clip(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0, h)
    crop_w = jnp.clip(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0, w)
    y0 = jax.random.uniform(k_y, (n,)) * (h - crop_h)
    x0 = jax.random.uniform(k_x, (n,)) * (w - crop_w)
    rows = jax.vmap(lambda s, l: _resize_matrix(s, l, h, out_h))(y0, crop_h)
    cols = jax.vmap(lambda s, l: _resize_matrix(s, l, w, out_w))(x0, crop_w)
    return jnp.einsum("nyh,nhwc,nxw->nyxc", rows, images, cols)


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


def _gray(x: jax.Array) -> jax.Array:
    return jnp.sum(x * jnp.asarray(GRAY_WEIGHTS), axis=-1, keepdims=True)


def _rotate_hue(x: jax.Array, turns: jax.Array) -> jax.Array:
    """Hue shift by `turns` of a full turn, as a rotation about the grey axis in YIQ space:
    one 3x3 matrix per image instead of torchvision's HSV round trip (the two agree to a
    few grey levels at the small shifts used here, and this one is a batched matmul)."""
    to_yiq = jnp.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = turns * 2 * jnp.pi
    cos, sin, zero, one = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle), jnp.ones_like(angle)
    rotation = jnp.stack([jnp.stack([one, zero, zero], -1), jnp.stack([zero, cos, -sin], -1),
                          jnp.stack([zero, sin, cos], -1)], -2)  # (n, 3, 3)
    matrix = jnp.linalg.inv(to_yiq) @ rotation @ to_yiq
    return jnp.einsum("nij,nhwj->nhwi", matrix, x)


def color_jitter(key: jax.Array, images: jax.Array, brightness: float, contrast: float, saturation: float,
                 hue: float, probability: float) -> jax.Array:
    """torchvision's ColorJitter applied with `probability`, in its fixed order (brightness,
    contrast, saturation, hue) rather than a random one. Images in [0, 1]; clipped after
    each step, as torchvision clips."""
    n = images.shape[0]
    keys = jax.random.split(key, 5)
    factor = lambda k, s: jax.random.uniform(k, (n, 1, 1, 1), minval=1 - s, maxval=1 + s)  # noqa: E731
    x = jnp.clip(images * factor(keys[0], brightness), 0, 1)
    mean_gray = jnp.mean(_gray(x), axis=(1, 2, 3), keepdims=True)
    x = jnp.clip(mean_gray + (x - mean_gray) * factor(keys[1], contrast), 0, 1)
    gray = _gray(x)
    x = jnp.clip(gray + (x - gray) * factor(keys[2], saturation), 0, 1)
    x = jnp.clip(_rotate_hue(x, jax.random.uniform(keys[3], (n,), minval=-hue, maxval=hue)), 0, 1)
    apply = jax.random.bernoulli(keys[4], probability, (n, 1, 1, 1))
    return jnp.where(apply, x, images)


def random_grayscale(key: jax.Array, images: jax.Array, probability: float) -> jax.Array:
    apply = jax.random.bernoulli(key, probability, (images.shape[0], 1, 1, 1))
    return jnp.where(apply, jnp.broadcast_to(_gray(images), images.shape), images)


def ssl_view(key: jax.Array, images: jax.Array, cfg: ml_collections.ConfigDict, normalization: str,
             crop_scale: tuple[float, float] | None = None, size: int | None = None) -> jax.Array:
    """One self-supervised view of a uint8 batch: random resized crop (area fraction in
    `crop_scale`, default the `ssl` block's, to `size` pixels, default the input's), flip,
    colour jitter, grayscale; normalised like every model input. `cfg` is the config's `ssl`
    block."""
    k_crop, k_flip, k_jitter, k_gray = jax.random.split(key, 4)
    x = random_resized_crop(k_crop, images.astype(jnp.float32), tuple(crop_scale or cfg.crop_scale), size=size)
    x = random_flip(k_flip, x) / 255.0
    x = color_jitter(k_jitter, x, *cfg.color_jitter, probability=cfg.color_jitter_probability)
    x = random_grayscale(k_gray, x, cfg.grayscale_probability)
    return normalize(x * 255.0, normalization)


# ----- strong views (RandAugment with random magnitudes and Cutout, as FixMatch uses them) -----

def _posterize(x: jax.Array, m: jax.Array) -> jax.Array:
    """Keep 8 - 4m bits of each channel. dm-pix has no posterize."""
    levels = 2.0 ** jnp.round(8 - 4 * m)
    return jnp.floor(x * (levels - 1) + 0.5) / (levels - 1)


def _autocontrast(x: jax.Array, m: jax.Array) -> jax.Array:
    """Stretch each channel to [0, 1] (magnitude-free, as in RandAugment). dm-pix has none."""
    del m
    low, high = x.min(axis=(0, 1), keepdims=True), x.max(axis=(0, 1), keepdims=True)
    return jnp.where(high > low, (x - low) / jnp.maximum(high - low, 1e-6), x)


def _rotate(x: jax.Array, m: jax.Array) -> jax.Array:
    return pix.rotate(x, m * jnp.pi / 6, mode="constant", cval=0.5)  # up to 30 degrees either way


def _translate(x: jax.Array, m: jax.Array) -> jax.Array:
    shift = jnp.stack([m, -m, 0.0]) * x.shape[0] * 0.3  # up to 30% of the side, along a diagonal
    return pix.affine_transform(x, jnp.eye(3), offset=shift, mode="constant", cval=0.5)


# Each op takes one [0, 1] image (H, W, C) and a magnitude m in [-1, 1] (the sign picks a direction).
RANDAUGMENT_OPS = (
    lambda x, m: x,  # identity
    lambda x, m: pix.adjust_brightness(x, 0.4 * m),
    lambda x, m: pix.adjust_contrast(x, 1 + 0.8 * m),
    lambda x, m: pix.adjust_saturation(x, 1 + 0.8 * m),
    lambda x, m: pix.adjust_hue(x, 0.1 * m),
    lambda x, m: pix.solarize(x, 1 - jnp.abs(m)),
    lambda x, m: _posterize(x, jnp.abs(m)),
    _autocontrast,
    _rotate,
    _translate,
)


def rand_augment(key: jax.Array, images: jax.Array, num_ops: int = 2) -> jax.Array:
    """RandAugment (Cubuk et al. 2020) as FixMatch samples it: per image, `num_ops` ops drawn
    from RANDAUGMENT_OPS, each at a uniformly random magnitude. Images in [0, 1]. The colour
    and geometric ops are dm-pix's; the two it lacks are written here."""
    n = images.shape[0]
    k_op, k_magnitude = jax.random.split(key)
    ops = jax.random.randint(k_op, (num_ops, n), 0, len(RANDAUGMENT_OPS))
    magnitudes = jax.random.uniform(k_magnitude, (num_ops, n), minval=-1.0, maxval=1.0)
    apply = jax.vmap(lambda x, op, m: jnp.clip(jax.lax.switch(op, RANDAUGMENT_OPS, x, m), 0.0, 1.0))
    for i in range(num_ops):
        images = apply(images, ops[i], magnitudes[i])
    return images


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Cutout (DeVries & Taylor 2017): a `size` x `size` square at a random centre of each
    image, clipped at the border, set to grey (0.5)."""
    n, h, w, _ = images.shape
    centre = jax.random.randint(key, (n, 2), 0, jnp.asarray([h, w]))
    rows = jnp.abs(jnp.arange(h)[None, :] - centre[:, :1]) < size // 2 + size % 2
    cols = jnp.abs(jnp.arange(w)[None, :] - centre[:, 1:]) < size // 2 + size % 2
    hole = (rows[:, :, None] & cols[:, None, :])[..., None]
    return jnp.where(hole, 0.5, images)


def strong_view(key: jax.Array, images: jax.Array, cfg: ml_collections.ConfigDict, cutout_size: int = 16) -> jax.Array:
    """A strongly augmented view of a uint8 batch, for self-training and consistency: the
    run's crop and flip (`cfg` is its `augment` block), RandAugment, Cutout; normalised
    like every model input."""
    k_crop, k_flip, k_rand, k_cut = jax.random.split(key, 4)
    x = random_crop(k_crop, images, cfg.crop_padding, cfg.pad_mode) if cfg.crop_padding else images
    x = random_flip(k_flip, x).astype(jnp.float32) / 255.0
    x = cutout(k_cut, rand_augment(k_rand, x), cutout_size)
    return normalize(x * 255.0, cfg.normalization)
