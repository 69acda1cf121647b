"""2x2/stride-2 max-pool formulations compared by the parity study (``pool`` option of bench_jax).

All compute the same forward values as ``nn.max_pool(x, (2, 2), (2, 2))``; they
differ in the HLO they produce, hence in XLA:CPU speed (and, on exact ties inside a
window, in how the gradient is shared out).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcifar.models import layers


def reduce_window(x: jax.Array) -> jax.Array:
    """Flax's pooling: ``reduce_window`` forward, ``select_and_scatter`` backward."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def strided_slices(x: jax.Array) -> jax.Array:
    """Elementwise max of the four strided sub-grids: one loop fusion, no reduce op."""
    _, h, w, _ = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    top = jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
    bottom = jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    return jnp.maximum(top, bottom)


POOLS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "reshape": layers.max_pool_2x2,
    "slices": strided_slices,
    "reduce_window": reduce_window,
}


def install(name: str) -> None:
    """Make SimpleCNN pool with ``POOLS[name]`` (it looked ``max_pool_2x2`` up at import)."""
    from jaxcifar.models import cnn

    cnn.max_pool_2x2 = POOLS[name]
