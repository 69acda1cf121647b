"""benchmarks/formulations.py: each alternative computes what it replaces, values and gradients,
so a speed ratio measured by benchmarks/fast_step.py compares like with like."""

import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import formulations  # noqa: E402


def conv_loss(conv, x, kernel, **kwargs):
    return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), "SAME", dimension_numbers=formulations.NHWC, **kwargs)))


# Tolerances: the largest errors measured (AVX2, float32) are 3.8e-7 relative on the loss and
# 8e-6 absolute on gradients of magnitude up to 27 (Winograd; NCHW is exact), and 1.6% of the
# GELU test's tolerance; each bound leaves at least 10x for other CPUs' summation orders.
@pytest.mark.parametrize("conv", [formulations.winograd_conv, formulations.nchw_conv], ids=["winograd", "nchw"])
@pytest.mark.parametrize("size", [8, 7])  # odd maps exercise Winograd's padded, cropped tiles
def test_convolution_matches_lax(conv, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)) / 4
    reference = lambda x, k: conv_loss(lax.conv_general_dilated, x, k)  # noqa: E731
    swapped = lambda x, k: conv_loss(conv, x, k)  # noqa: E731
    np.testing.assert_allclose(swapped(x, kernel), reference(x, kernel), rtol=1e-4)
    for got, want in zip(jax.grad(swapped, (0, 1))(x, kernel), jax.grad(reference, (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_recompute_gelu_is_the_exact_gelu_and_its_derivative():
    x = jnp.linspace(-8.0, 8.0, 4001)
    exact = lambda x: nn.gelu(x, approximate=False)  # noqa: E731
    np.testing.assert_array_equal(formulations.recompute_gelu(x), exact(x))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(formulations.recompute_gelu(x) ** 2))(x),
                               jax.grad(lambda x: jnp.sum(exact(x) ** 2))(x), rtol=1e-5, atol=1e-6)
