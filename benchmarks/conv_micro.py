"""Per-layer XLA:CPU microbenchmarks behind benchmarks/NOTES.md (one process = one XLA_FLAGS).

Times, for the convolution shapes of simple_cnn and ResNet-18, the forward pass, the input
gradient (dgrad) and the weight gradient (wgrad), plus rewrites of them as matmuls
(im2col by concatenation, nine shifted matmuls); then the transpose pathology: an NHWC ->
CHWN transpose alone, and fused with a three-deep elementwise chain as in a ResNet block.
Best-of-N wall times, to be robust on a shared machine. Compare flag settings by running
it twice, e.g.:

    .venv/bin/python benchmarks/conv_micro.py
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \\
        .venv/bin/python benchmarks/conv_micro.py
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
_SAME1 = ((1, 1), (1, 1))
# name, batch, spatial size, in channels, out channels, padding (3x3 kernels, stride 1)
SHAPES = [("cnn conv1", 256, 32, 3, 32, "VALID"), ("cnn conv2", 256, 15, 32, 64, "VALID"),
          ("cnn conv3", 256, 6, 64, 128, "VALID"), ("rn 64@32", 128, 32, 64, 64, _SAME1),
          ("rn 128@16", 128, 16, 128, 128, _SAME1), ("rn 256@8", 128, 8, 256, 256, _SAME1),
          ("rn 512@4", 128, 4, 512, 512, _SAME1)]


def best_ms(fn: Callable, *args, repeats: int = 4) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def conv(x: jax.Array, w: jax.Array, padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)


def im2col(x: jax.Array, padding, out_size: int) -> jax.Array:
    """(N, H, W, 9C) patches by concatenating the nine shifted views."""
    if padding != "VALID":
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    return jnp.concatenate([x[:, i:i + out_size, j:j + out_size, :] for i in range(3) for j in range(3)], -1)


def shifted_wgrad(x: jax.Array, g: jax.Array, padding) -> jax.Array:
    """Weight gradient as nine matmuls over (N, H, W), one per kernel tap."""
    if padding != "VALID":
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    size = g.shape[1]
    taps = [jnp.einsum("nhwc,nhwd->cd", x[:, i:i + size, j:j + size, :], g) for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, *taps[0].shape)


def layer_times(n: int, size: int, cin: int, cout: int, padding) -> tuple[dict[str, float], float]:
    """({variant: ms}, forward GF/s) for one 3x3 convolution layer."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, size, size, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
    y = conv(x, w, padding)
    g = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    out = y.shape[1]

    def fwd_im2col(x, w):
        return jnp.einsum("nhwp,pd->nhwd", im2col(x, padding, out), w.reshape(-1, cout))

    def dgrad(w, g):
        return jax.vjp(lambda x: conv(x, w, padding), x)[1](g)[0]

    def wgrad(x, g):
        return jax.vjp(lambda w: conv(x, w, padding), w)[1](g)[0]

    def wgrad_im2col(x, g):
        return jnp.einsum("nhwp,nhwd->pd", im2col(x, padding, out), g)

    times = {
        "fwd": best_ms(jax.jit(functools.partial(conv, padding=padding)), x, w),
        "fwd im2col": best_ms(jax.jit(fwd_im2col), x, w),
        "dgrad": best_ms(jax.jit(dgrad), w, g),
        "wgrad": best_ms(jax.jit(wgrad), x, g),
        "wg im2col": best_ms(jax.jit(wgrad_im2col), x, g),
        "wg shift": best_ms(jax.jit(functools.partial(shifted_wgrad, padding=padding)), x, g),
    }
    return times, 2 * np.prod(y.shape) * cin * 9 / times["fwd"] / 1e6


def conv_table() -> None:
    print(f"{'layer':10s} {'fwd':>7s} {'fwd im2col':>10s} {'dgrad':>7s} {'wgrad':>7s} {'wg im2col':>9s} "
          f"{'wg shift':>8s}   (ms, best of 4; GF/s of fwd)")
    for name, n, size, cin, cout, padding in SHAPES:
        times, gflops = layer_times(n, size, cin, cout, padding)
        print(f"{name:10s} " + " ".join(f"{v:{max(7, len(k))}.1f}" for k, v in times.items())
              + f"   {gflops:.0f} GF/s")


def block_chain(a: jax.Array, b: jax.Array, c: jax.Array, s: list[jax.Array]) -> jax.Array:
    """BatchNorm affine + residual add + ReLU of three stacked blocks, as XLA fuses them."""
    inner = jnp.maximum(c * s[2] + s[0], 0)
    return jnp.maximum(a * s[0] + s[1] + jnp.maximum(b * s[1] + s[2] + inner, 0), 0)


def to_chwn(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (3, 1, 2, 0))


def transposed_chain(a: jax.Array, b: jax.Array, c: jax.Array, s: list[jax.Array]) -> jax.Array:
    return to_chwn(block_chain(a, b, c, s))


def transpose_table() -> None:
    """NHWC -> CHWN alone vs fused with the chain of three blocks (the weight-gradient input)."""
    print("\nshape               copy  transpose  chain  chain+transpose   (ms, best of 4)")
    rng = np.random.default_rng(0)
    for shape in [(128, 32, 32, 64), (128, 16, 16, 128), (32, 32, 32, 64), (256, 30, 30, 32)]:
        a, b, c = (jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(3))
        s = [jnp.asarray(rng.standard_normal(shape[-1], np.float32)) for _ in range(3)]
        chain = functools.partial(block_chain, s=s)
        fused = functools.partial(transposed_chain, s=s)
        row = [best_ms(jax.jit(lambda x: x + 1.0), a), best_ms(jax.jit(to_chwn), a),
               best_ms(jax.jit(chain), a, b, c), best_ms(jax.jit(fused), a, b, c)]
        print(f"{shape!s:18s} " + " ".join(f"{v:9.1f}" for v in row))


if __name__ == "__main__":
    conv_table()
    transpose_table()
