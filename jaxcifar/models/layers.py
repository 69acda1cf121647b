"""Small building blocks shared by the models."""

import jax
import jax.numpy as jnp


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
