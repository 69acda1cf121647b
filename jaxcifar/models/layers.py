"""Small building blocks shared by the models."""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 on NHWC input, as reshape + max.

    Equals ``nn.max_pool(x, (2, 2), (2, 2))`` (VALID padding): an odd trailing
    row/column is cropped first, exactly as VALID pooling drops it. The reshape
    form avoids XLA's ``reduce_window``/``select_and_scatter`` pair, which makes
    the backward pass about 1.4x faster on XLA:CPU. (On exact ties inside a
    window the gradient is split evenly instead of going to one element; ties
    are measure-zero for float activations, and ReLU zeros have zero gradient.)
    """
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return jnp.max(x.reshape(n, h2, 2, w2, 2, c), axis=(2, 4))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with a faster weight gradient on XLA:CPU; for ``nn.Conv``.

    Pass as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``: parameters,
    forward values and gradients are unchanged (bitwise, in float32 and bfloat16).

    Why: JAX expresses the weight gradient as a convolution over the input with batch
    and channels swapped, so XLA:CPU transposes every activation NHWC -> CHWN. It emits
    that transpose as a plain loop and fuses the activation's producers into it (for a
    ResNet, the BatchNorm/ReLU/residual chain of up to three blocks), which then reads
    several tensors with a stride of C floats per element: about 10x slower than a
    copy, and most of a ResNet-18 CPU step. Here the custom VJP moves the batch to the
    minor end with an identity matmul instead (exact: products with 1.0 and sums with
    0.0, at HIGHEST precision), a cache-blocked GEMM that XLA does not fuse into, and
    hands the weight-gradient convolution its input already batch-minor ("HWCN"). Any
    case other than plain NHWC/HWIO convolutions falls back to ``lax.conv_general_dilated``.
    """
    plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
             and _is_nhwc(dimension_numbers, lhs.ndim)
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1))))
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision,
                                        **kwargs)
    padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return _conv_nhwc(lhs, rhs, tuple(window_strides), padding, precision)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
    """Whether ``dimension_numbers`` mean NHWC input, HWIO kernel, NHWC output (Flax's default)."""
    nhwc = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, ("NHWC", "HWIO", "NHWC"))
    return dimension_numbers is None or lax.conv_dimension_numbers(
        (1,) * ndim, (1,) * ndim, dimension_numbers) == nhwc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple, padding, precision) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _conv_nhwc_fwd(x, w, strides, padding, precision):
    return _conv_nhwc(x, w, strides, padding, precision), (x, w)


def _conv_nhwc_bwd(strides, padding, precision, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(
        lambda x: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                           precision=precision), x)
    x_batch_minor = _batch_minor(x)
    _, kernel_vjp = jax.vjp(
        lambda w: lax.conv_general_dilated(x_batch_minor, w, strides, padding,
                                           dimension_numbers=("HWCN", "HWIO", "NHWC"), precision=precision), w)
    return input_vjp(g)[0], kernel_vjp(g)[0]


def _batch_minor(x: jax.Array) -> jax.Array:
    """NHWC -> HWCN as an exact identity matmul (see ``conv_general_dilated`` for why)."""
    eye = jnp.eye(x.shape[0], dtype=x.dtype)
    return jnp.einsum("nhwc,nm->hwcm", x, eye, precision=lax.Precision.HIGHEST)


_NHWC = ("NHWC", "HWIO", "NHWC")
_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)
