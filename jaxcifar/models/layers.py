"""Small building blocks shared by the models."""

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp


_TANH_GELU = contextvars.ContextVar("tanh_gelu", default=False)


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's exact GELU, x * Phi(x) (airbench's activation); its tanh form while
    `tanh_gelu_traced()` is active."""
    return nn.gelu(x, approximate=_TANH_GELU.get())


@contextlib.contextmanager
def tanh_gelu_traced() -> Iterator[None]:
    """Trace `gelu` in its tanh form inside this block: the form that TFLite's converter turns
    into its one GELU op (litert.convert says why it needs that, and restores the exact GELU).
    Only what is traced inside the block changes; a network traced before or after is exact."""
    token = _TANH_GELU.set(True)
    try:
        yield
    finally:
        _TANH_GELU.reset(token)


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


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Low-rank adapters on a model's convolutions (`peft.mode=lora`): rank and alpha; the
    update is scaled by alpha / rank, as in LoRA and HF PEFT."""

    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


# LoRA's `A`: PyTorch's default conv init, as HF PEFT's `kaiming_uniform_(a=sqrt(5))`.
_LORA_A_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Conv(nn.Conv):
    """`nn.Conv` (same parameters, same paths), plus a LoRA adapter when `lora` is set and the
    kernel is 3x3 or 1x1 (HF PEFT's conv LoRA): `lora_a`, a conv of the same size and stride
    down to `rank` channels, then `lora_b`, a 1x1 conv back, initialised to zero so training
    starts from the frozen network. Other kernels (airbench's 2x2 whitening, an ImageNet
    stem's 7x7) stay as they are. A conv is linear in its kernel, so the adapter folds into
    it exactly: `peft.merge_lora`."""

    lora: LoRA | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if self.lora is None or tuple(self.kernel_size) not in ((3, 3), (1, 1)):
            return y
        down = nn.Conv(self.lora.rank, self.kernel_size, strides=self.strides, padding=self.padding, use_bias=False,
                       kernel_init=_LORA_A_INIT, dtype=self.dtype, name="lora_a")(x)
        up = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                     name="lora_b")(down)
        return y + self.lora.scale * up
