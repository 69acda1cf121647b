"""Alternative formulations of the `fast` network's convolutions and activations, swapped
into the real model by `benchmarks/fast_step.py --variants ...` (see `PATCHES` there) so that
each is timed and checked on the Trainer's own step. Each function here matches what it
replaces: `lax.conv_general_dilated` as Flax's `nn.Conv` calls it, or `airbench.gelu`.

- `winograd_conv`: Winograd F(2x2, 3x3) (Lavin & Gray 2015) as 16 batched matmuls. A 3x3
  convolution's 9 multiplies per output become 16 per 2x2 output tile, 2.25x fewer, and the
  matmuls run in XLA:CPU's dot kernels, which are faster than its Eigen convolutions
  (benchmarks/NOTES.md section 0). The transforms are linear, so JAX's autodiff of this
  function is itself Winograd-domain arithmetic: the input gradient is the transposed
  transforms around the transposed matmuls, the kernel gradient a matmul of the
  transformed activations. No custom VJP is needed for the backward pass to stay in
  matmuls; one would only re-derive the same expressions by hand.
- `nchw_conv`: the same convolution with channels-first operands (NCHW / OIHW), to see
  whether XLA:CPU lays the weight-gradient out without the NHWC->CHWN transposes.
- `tanh_gelu`: the tanh approximation of GELU in place of the exact erf one.
- `recompute_gelu`: the exact GELU with a custom VJP that keeps only its input for the
  backward pass and recomputes the derivative there. Autodiff keeps the input and the
  derivative's pieces (the erfc and exp values) as activation-sized residuals written in
  the forward pass and read back in the backward one (NOTES section 8); recomputing trades
  that memory traffic for one more erfc and exp per element.

Run as a script, it checks that each computes what it replaces, values and gradients, so a
speed ratio measured by fast_step.py compares like with like (tests/test_formulations.py
runs it):

    python benchmarks/formulations.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def _is_plain_3x3(lhs: jax.Array, kernel: jax.Array, window_strides, padding, kwargs: dict) -> bool:
    """Whether the call is the stride-1, SAME-padded, undilated NHWC 3x3 convolution that
    `winograd_conv` computes (anything else, e.g. the 2x2 whitening conv, goes to lax)."""
    dilations = [kwargs.get(k) for k in ("lhs_dilation", "rhs_dilation")]
    numbers = kwargs.get("dimension_numbers")
    return (kernel.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)
            and padding in ("SAME", [(1, 1), (1, 1)], ((1, 1), (1, 1)))
            and all(d is None or tuple(d) == (1, 1) for d in dilations)
            and (numbers is None or lax.conv_dimension_numbers(lhs.shape, kernel.shape, numbers)
                 == lax.conv_dimension_numbers(lhs.shape, kernel.shape, NHWC)) and kwargs.get("feature_group_count", 1) == 1)


def _winograd_tiles(x: jax.Array, axis: int, tiles: int) -> list[jax.Array]:
    """B^T d along `axis` of the padded input: the 4 transformed rows of every 4-row window
    at stride 2 (B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]])."""
    d = [lax.slice_in_dim(x, a, a + 2 * tiles - 1, stride=2, axis=axis) for a in range(4)]
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _kernel_transform(g: list[jax.Array]) -> list[jax.Array]:
    """G g along one kernel axis (G = [[1,0,0], [1/2,1/2,1/2], [1/2,-1/2,1/2], [0,0,1]])."""
    return [g[0], (g[0] + g[1] + g[2]) / 2, (g[0] - g[1] + g[2]) / 2, g[2]]


def _output_transform(m: list[jax.Array]) -> list[jax.Array]:
    """A^T m along one tile axis (A^T = [[1,1,1,0], [0,1,-1,-1]])."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, **kwargs) -> jax.Array:
    """NHWC x HWIO 3x3 SAME convolution by Winograd F(2x2, 3x3); other convolutions by lax."""
    if not _is_plain_3x3(lhs, rhs, window_strides, padding, kwargs):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    n, h, w, c = lhs.shape
    th, tw = -(-h // 2), -(-w // 2)  # 2x2 output tiles; odd sizes are padded and cropped
    x = jnp.pad(lhs, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    v = [col for row in _winograd_tiles(x, 1, th) for col in _winograd_tiles(row, 2, tw)]  # 16 x (n,th,tw,c)
    v = jnp.stack(v).reshape(16, n * th * tw, c)
    rows = _kernel_transform([rhs[i] for i in range(3)])  # 4 x (3, c, d)
    u = jnp.stack([col for row in rows for col in _kernel_transform([row[j] for j in range(3)])])  # (16, c, d)
    m = jnp.einsum("tpc,tcd->tpd", v, u, precision=kwargs.get("precision"))
    m = m.reshape(4, 4, n, th, tw, -1)
    y = jnp.stack([jnp.stack(_output_transform([r[j] for j in range(4)]))
                   for r in _output_transform([m[i] for i in range(4)])])  # (2, 2, n, th, tw, d)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, -1)
    return y[:, :h, :w]


def nchw_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, **kwargs) -> jax.Array:
    """The same convolution computed on NCHW / OIHW operands (transposed in and out)."""
    kwargs = {**kwargs, "dimension_numbers": ("NCHW", "OIHW", "NCHW")}
    y = lax.conv_general_dilated(lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1), window_strides, padding,
                                 **kwargs)
    return y.transpose(0, 2, 3, 1)


def tanh_gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=True)


@jax.custom_vjp
def recompute_gelu(x: jax.Array) -> jax.Array:
    return nn.gelu(x, approximate=False)


def _recompute_gelu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return recompute_gelu(x), x  # the input is the only residual


def _recompute_gelu_backward(x: jax.Array, cotangent: jax.Array) -> tuple[jax.Array]:
    cdf = 0.5 * lax.erfc(-x * (1 / jnp.sqrt(2.0)).astype(x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * (1 / jnp.sqrt(2 * jnp.pi)).astype(x.dtype)
    return (cotangent * (cdf + x * pdf),)  # d/dx x*Phi(x) = Phi(x) + x*phi(x)


recompute_gelu.defvjp(_recompute_gelu_forward, _recompute_gelu_backward)


def _conv_loss(conv, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)))


def check() -> None:
    """Raise AssertionError where a formulation departs from what it replaces. Tolerances: the
    largest errors measured (AVX2, float32) are 3.8e-7 relative on the loss and 8e-6 absolute
    on gradients of magnitude up to 27 (Winograd; NCHW is exact), and 1.6% of the GELU
    check's tolerance; each bound leaves at least 10x for other CPUs' summation orders."""
    reference = lambda x, k: _conv_loss(lax.conv_general_dilated, x, k)  # noqa: E731
    for conv in (winograd_conv, nchw_conv):
        for size in (8, 7):  # odd maps exercise Winograd's padded, cropped tiles
            x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
            kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)) / 4
            swapped = lambda x, k: _conv_loss(conv, x, k)  # noqa: E731
            where = f"{conv.__name__} on {size}x{size} maps"
            np.testing.assert_allclose(swapped(x, kernel), reference(x, kernel), rtol=1e-4, err_msg=where)
            for got, want in zip(jax.grad(swapped, (0, 1))(x, kernel), jax.grad(reference, (0, 1))(x, kernel)):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"gradient of {where}")
    x = jnp.linspace(-8.0, 8.0, 4001)
    exact = lambda x: nn.gelu(x, approximate=False)  # noqa: E731
    np.testing.assert_array_equal(recompute_gelu(x), exact(x))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(recompute_gelu(x) ** 2))(x),
                               jax.grad(lambda x: jnp.sum(exact(x) ** 2))(x), rtol=1e-5, atol=1e-6,
                               err_msg="gradient of recompute_gelu")


if __name__ == "__main__":
    check()
    print("Each formulation computes what it replaces, values and gradients.")
