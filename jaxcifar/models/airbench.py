"""An airbench94-style network (Keller Jordan's CIFAR-10 speed record, written for JAX).

    whitening 2x2 conv (24 ch, frozen, set from the data) -> GELU
    -> 3 x [conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU]  (64, 256, 256 ch)
    -> global max-pool -> Dense 10 (no bias) x 1/9

BatchNorm as in airbench: no scale parameter, epsilon 1e-12, running statistics updated as
0.6 * running + 0.4 * batch (airbench's `momentum=0.6` is passed to PyTorch as `1 - 0.6`;
Flax's `momentum` is the weight of the running value, so 0.6 here too). The whitening
kernel comes from the eigenvectors of the training set's 2x2 patch covariance
(`whitening_kernel`), in +/- pairs.

Initialisation as in airbench (PyTorch's defaults, which it relies on): kernels uniform in
+/-1/sqrt(fan_in) (variance 1/(3 fan_in), a third of Flax's LeCun normal; with BatchNorm
after each conv the kernel scale sets the effective learning rate), and each 3x3 conv's
first `in_features` output channels start as the identity (`torch.nn.init.dirac_`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcifar.models.layers import Conv, LoRA, gelu, max_pool_2x2

WIDTHS = (64, 256, 256)
WHITEN_CHANNELS = 24  # 2 x (2*2*3) eigenvectors
# PyTorch's default for Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)) = U(+/-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def batch_norm(use_running_average: bool, name: str, dtype: jnp.dtype = jnp.float32) -> nn.BatchNorm:
    """Its statistics are reduced and kept in float32 whatever `dtype` (the output's) is."""
    return nn.BatchNorm(use_running_average=use_running_average, momentum=0.6, epsilon=1e-12, use_scale=False,
                        dtype=dtype, name=name)


def dirac_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """HWIO kernel: PyTorch default init, except that output channel i < in_features is
    the identity on input channel i (airbench's `dirac_` on `weight[:in_features]`)."""
    h, w, cin, cout = shape
    kernel = torch_default_init(key, shape, dtype)
    n = min(cin, cout)
    identity = jnp.zeros((h, w, cin, n), dtype).at[h // 2, w // 2, jnp.arange(n), jnp.arange(n)].set(1)
    return kernel.at[..., :n].set(identity)


class ConvGroup(nn.Module):
    features: int
    dtype: jnp.dtype = jnp.float32
    lora: LoRA | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        x = Conv(self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=dirac_init, dtype=self.dtype,
                 name="conv1", lora=self.lora)(x)
        x = gelu(batch_norm(use_running_average, "bn1", self.dtype)(max_pool_2x2(x)))
        x = Conv(self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=dirac_init, dtype=self.dtype,
                 name="conv2", lora=self.lora)(x)
        return gelu(batch_norm(use_running_average, "bn2", self.dtype)(x))


class AirbenchBackbone(nn.Module):
    dtype: jnp.dtype = jnp.float32
    widths: tuple[int, ...] = WIDTHS
    lora: LoRA | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        x = gelu(nn.Conv(WHITEN_CHANNELS, (2, 2), padding="VALID", dtype=self.dtype, name="whiten")(x))
        for i, width in enumerate(self.widths, start=1):
            x = ConvGroup(width, self.dtype, self.lora, name=f"group{i}")(x, use_running_average=use_running_average)
        return jnp.max(x, axis=(1, 2))  # 3x3 maps -> global max-pool


class Airbench(nn.Module):
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    scale: float = 1 / 9  # airbench's output scaling
    dropout: float = 0.0  # on the pooled features entering the head, in training only (airbench has none)
    widths: tuple[int, ...] = WIDTHS  # one per conv group (three in airbench); narrower cost less (ssl_* recipes)
    lora: LoRA | None = None  # adapters on the 3x3 convs (peft.mode=lora); the whitening conv stays frozen

    def setup(self) -> None:
        self.backbone = AirbenchBackbone(self.dtype, tuple(self.widths), self.lora)
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = nn.Dense(self.num_classes, use_bias=False, kernel_init=torch_default_init, dtype=self.dtype)

    def __call__(self, x: jax.Array, *, train: bool, freeze_backbone: bool = False) -> jax.Array:
        features = self.backbone(x, use_running_average=(not train) or freeze_backbone)
        if freeze_backbone:
            features = jax.lax.stop_gradient(features)
        features = self.head_dropout(features, deterministic=not train)
        return self.head(features).astype(jnp.float32) * self.scale


def whitening_kernel(images: np.ndarray, eps: float = 5e-4) -> np.ndarray:
    """HWIO (2, 2, 3, 24) kernel that whitens 2x2 patches of `images` (normalised float
    NHWC): eigenvectors of the (uncentred) patch covariance scaled by 1/sqrt(eigenvalue),
    largest first, followed by their negatives (so GELU keeps both signs)."""
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    patches = np.stack([x[:, i:i + h - 1, j:j + w - 1, :] for i in (0, 1) for j in (0, 1)], axis=3)
    flat = patches.reshape(-1, 2 * 2 * c)  # (patch row, col, channel) order = HWI
    eigenvalues, eigenvectors = np.linalg.eigh(flat.T @ flat / len(flat))
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    kernel = np.concatenate([scaled, -scaled], axis=1)  # (12, 24)
    return kernel.reshape(2, 2, c, WHITEN_CHANNELS).astype(np.float32)


def init_from_data(params: dict, normalized_images: np.ndarray) -> dict:
    """Params with the whitening kernel computed from (a sample of) the training images."""
    backbone = dict(params["backbone"])
    backbone["whiten"] = {"kernel": jnp.asarray(whitening_kernel(normalized_images)),
                          "bias": jnp.zeros(WHITEN_CHANNELS, jnp.float32)}
    return {**params, "backbone": backbone}
