"""Mixed precision: the dtype a run's network computes in (`config.precision`).

The convention of big_vision, the Flax examples and MaxText: convolutions, matmuls and the
activations between them in the compute dtype; parameters, optimizer state and BatchNorm
statistics stay float32 (Flax's `param_dtype` default; BatchNorm reduces in float32), and
every model returns float32 logits, so the softmax and the loss are float32. Checkpoints
hold only float32 arrays, so a run may resume at another precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Backends whose matrix units compute bfloat16 at full speed. On an AVX2 CPU a bfloat16
# matmul is about 28x slower than a float32 one (issue 27), so `auto` keeps float32 there.
BFLOAT16_BACKENDS = ("gpu", "tpu")


def compute_dtype(precision: str, backend: str | None = None) -> tuple[jnp.dtype, str]:
    """(the dtype the network computes in, why): `precision` as named, or for `auto` bfloat16
    on a GPU/TPU and float32 elsewhere. `backend`: JAX's default backend unless given."""
    if precision != "auto":
        return jnp.dtype(precision), f"precision={precision}"
    backend = backend or jax.default_backend()
    chosen = "bfloat16" if backend in BFLOAT16_BACKENDS else "float32"
    return jnp.dtype(chosen), f"precision=auto on {backend}: {chosen}"
