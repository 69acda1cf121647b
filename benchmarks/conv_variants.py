"""Convolution formulations compared by the parity study (``conv`` option of bench_jax).

Each is a drop-in ``conv_general_dilated`` for ``flax.linen.Conv`` (its
``conv_general_dilated=`` attribute): parameters and forward values are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def batch_minor_wgrad_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                           precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` with the weight gradient fed a batch-minor input.

    Parameters, forward values and gradients are unchanged (bitwise, float32 and
    bfloat16, checked on simple_cnn, resnet18 and airbench). Measured: +10% on the
    ResNet-18 step, -10..-40% on simple_cnn; not adopted (benchmarks/NOTES.md).

    Why: JAX expresses the weight gradient as a convolution over the input with batch
    and channels swapped, so XLA:CPU transposes every activation NHWC -> CHWN. It emits
    that transpose as a plain loop and fuses the activation's producers into it (for a
    ResNet, the BatchNorm/ReLU/residual chain of up to three blocks), which then reads
    several tensors at a power-of-two stride: about 10x slower than a copy (NOTES.md).
    Here the custom VJP moves the batch to the minor end with an identity matmul
    instead (exact: products with 1.0 and sums with 0.0, at HIGHEST precision) and
    hands the weight-gradient convolution its input already batch-minor ("HWCN").
    Why it gains little: XLA still copies the matmul operand into a transposed layout
    and fuses the same producer chain into that copy, and the matmul adds 2N FLOPs per
    element. Anything but plain NHWC/HWIO convolutions falls back to lax.
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


CONVS: dict[str, Callable[..., jax.Array]] = {"batch_minor_wgrad": batch_minor_wgrad_conv}


def install(name: str) -> None:
    """Make every ``nn.Conv`` built from now on in this process use ``CONVS[name]``."""
    nn.Conv = functools.partial(nn.Conv, conv_general_dilated=CONVS[name])
