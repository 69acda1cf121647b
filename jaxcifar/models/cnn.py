"""The seed Keras CNN, re-implemented in Flax Linen."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcifar.models.layers import Conv, LoRA, max_pool_2x2

# Keras' default initialisers, so training from scratch starts like the seed.
_KERNEL_INIT = nn.initializers.glorot_uniform()


class CNNBackbone(nn.Module):
    """Conv(32/64/128, 3x3, VALID) + ReLU + 2x2 max-pool, then flatten.

    For 32x32 input: 30 -> 15 -> 13 -> 6 -> 4 -> 2, i.e. 2*2*128 = 512 features.
    """

    dtype: jnp.dtype = jnp.float32
    lora: LoRA | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool = True) -> jax.Array:
        del use_running_average  # no BatchNorm; taken so every backbone is called the same way
        for i, features in enumerate((32, 64, 128), start=1):
            x = Conv(
                features,
                (3, 3),
                padding="VALID",
                kernel_init=_KERNEL_INIT,
                dtype=self.dtype,
                name=f"conv{i}",
                lora=self.lora,
            )(x)
            x = max_pool_2x2(nn.relu(x))
        return x.reshape(x.shape[0], -1)


class SimpleCNN(nn.Module):
    """Seed CNN classifier: ``backbone`` (convs) + ``head`` (one Dense layer).

    Returns float32 logits (no softmax). 98,378 params for 10 classes, the
    same as the Keras seed model.
    """

    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    dropout: float = 0.0  # on the features entering the head, in training only
    lora: LoRA | None = None  # adapters on the backbone's convs (peft.mode=lora)

    def setup(self) -> None:
        self.backbone = CNNBackbone(dtype=self.dtype, lora=self.lora)
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = nn.Dense(self.num_classes, kernel_init=_KERNEL_INIT, dtype=self.dtype)

    def __call__(self, x: jax.Array, *, train: bool, freeze_backbone: bool = False) -> jax.Array:
        """``train`` turns dropout on (it needs ``rngs={'dropout': key}`` then)."""
        features = self.backbone(x)
        if freeze_backbone:
            # No gradient is needed through a frozen backbone; this lets XLA drop its backward pass.
            features = jax.lax.stop_gradient(features)
        features = self.head_dropout(features, deterministic=not train)
        return self.head(features).astype(jnp.float32)
