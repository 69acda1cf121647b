"""Does splitting a convolution's batch into independent halves let XLA:CPU run them side
by side? Times fwd+bwd (value_and_grad w.r.t. kernel and input) of one
1024x16x16x64 -> 256 3x3 convolution, whole or as `parts` batch slices concatenated
(the same math). Findings: benchmarks/NOTES.md section 6.

    .venv/bin/python benchmarks/split_conv.py 1 && .venv/bin/python benchmarks/split_conv.py 2
"""

import sys
import time

import jaxcifar  # noqa: F401  (jaxcifar's XLA:CPU flags, before JAX starts)
import jax
import jax.numpy as jnp


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main(parts: int) -> None:
    def loss(w, x):
        y = conv(x, w) if parts == 1 else jnp.concatenate([conv(c, w) for c in jnp.split(x, parts)], axis=0)
        return jnp.sum(y ** 2)

    x = jax.random.normal(jax.random.key(0), (1024, 16, 16, 64))
    w = jax.random.normal(jax.random.key(1), (3, 3, 64, 256)) * 0.05
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(w, x))
    times = []
    for _ in range(3):
        t0 = time.time()
        jax.block_until_ready(step(w, x))
        times.append(time.time() - t0)
    print(f"parts={parts} best {min(times):.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
