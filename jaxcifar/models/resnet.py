"""ResNet-18/50 in Flax Linen, laid out like torchvision so weights convert 1:1.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1_0/conv1``,
``layer1_0/downsample_conv``, ``layer1_0/downsample_bn``); every BatchNorm has
``bn`` in its name so path-regex rules like ``.*bn.*`` select them all.
Convolutions use explicit symmetric padding (never ``SAME``), because ``SAME``
pads asymmetrically for stride 2 and would not match PyTorch.
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcifar.models.layers import Conv, LoRA

Stem = Literal["cifar", "imagenet"]

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# BatchNorm as in PyTorch: eps 1e-5, running-stat momentum 0.1 (= Flax 0.9).
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def _conv(features: int, kernel: int, stride: int, dtype: jnp.dtype, name: str, lora: LoRA | None) -> Conv:
    """Bias-free conv with PyTorch padding ``kernel // 2``."""
    pad = kernel // 2
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_CONV_INIT,
        dtype=dtype,
        name=name,
        lora=lora,
    )


def _bn(use_running_average: bool, dtype: jnp.dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=use_running_average,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        dtype=dtype,
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) with identity/projection shortcut. `inner_features`
    narrows the first conv (structured pruning removes those channels; the block's output
    width, which the shortcut shares, is unchanged)."""

    features: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    lora: LoRA | None = None
    inner_features: int | None = None
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        y = _conv(self.inner_features or self.features, 3, self.stride, self.dtype, "conv1", self.lora)(x)
        y = nn.relu(_bn(use_running_average, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, 1, self.dtype, "conv2", self.lora)(y)
        y = _bn(use_running_average, self.dtype, "bn2")(y)
        return nn.relu(y + _shortcut(x, y.shape[-1], self.stride, use_running_average, self.dtype, self.lora))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 x4 expansion, plus shortcut."""

    features: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    lora: LoRA | None = None
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        y = _conv(self.features, 1, 1, self.dtype, "conv1", self.lora)(x)
        y = nn.relu(_bn(use_running_average, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, self.stride, self.dtype, "conv2", self.lora)(y)
        y = nn.relu(_bn(use_running_average, self.dtype, "bn2")(y))
        y = _conv(self.features * self.expansion, 1, 1, self.dtype, "conv3", self.lora)(y)
        y = _bn(use_running_average, self.dtype, "bn3")(y)
        return nn.relu(y + _shortcut(x, y.shape[-1], self.stride, use_running_average, self.dtype, self.lora))


def _shortcut(
    x: jax.Array, features: int, stride: int, use_running_average: bool, dtype: jnp.dtype, lora: LoRA | None
) -> jax.Array:
    """Identity, or 1x1 conv + BN (torchvision's ``downsample``) when the shape changes.

    Called inside a block's compact ``__call__``, so the modules become children
    of that block (``downsample_conv``, ``downsample_bn``).
    """
    if stride == 1 and x.shape[-1] == features:
        return x
    x = _conv(features, 1, stride, dtype, "downsample_conv", lora)(x)
    return _bn(use_running_average, dtype, "downsample_bn")(x)


class ResNetBackbone(nn.Module):
    """Stem + four stages + global average pool; returns (N, C) features."""

    stage_sizes: tuple[int, ...]
    block_cls: type[BasicBlock] | type[Bottleneck]
    stem: Stem = "cifar"
    width: int = 64  # channels of the stem and first stage; doubles per stage
    dtype: jnp.dtype = jnp.float32
    lora: LoRA | None = None
    block_widths: tuple[int, ...] | None = None  # basic blocks' inner widths, in order (prune.channels)

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        if self.block_widths is not None and (self.block_cls is not BasicBlock
                                              or len(self.block_widths) != sum(self.stage_sizes)):
            raise ValueError(f"block_widths={self.block_widths} needs basic blocks, one width per block "
                             f"({sum(self.stage_sizes)}).")
        inner = iter(self.block_widths or ())
        extra = lambda: {"inner_features": next(inner)} if self.block_widths else {}  # noqa: E731
        if self.stem == "cifar":
            x = _conv(self.width, 3, 1, self.dtype, "conv1", self.lora)(x)
            x = nn.relu(_bn(use_running_average, self.dtype, "bn1")(x))
        elif self.stem == "imagenet":
            x = _conv(self.width, 7, 2, self.dtype, "conv1", self.lora)(x)
            x = nn.relu(_bn(use_running_average, self.dtype, "bn1")(x))
            # torchvision MaxPool2d(3, 2, padding=1): padding is -inf, as in nn.max_pool.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected 'cifar' or 'imagenet'")
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(
                    self.width * 2**i, stride=stride, dtype=self.dtype, lora=self.lora, name=f"layer{i + 1}_{j}",
                    **extra()
                )(x, use_running_average=use_running_average)
        return jnp.mean(x, axis=(1, 2))


class ResNet(nn.Module):
    """ResNet classifier: ``backbone`` (features) + ``head`` (Dense to logits). Returns
    float32 logits. It takes images of any size; a run resizes them to `data.image_size`
    before augmentation (ImageNet-pretrained backbones do better on upsampled 32x32 images).
    """

    stage_sizes: tuple[int, ...]
    block_cls: type[BasicBlock] | type[Bottleneck]
    num_classes: int = 10
    stem: Stem = "cifar"
    width: int = 64  # smaller widths (with fewer stage_sizes) give toy ResNets for tests
    dtype: jnp.dtype = jnp.float32
    dropout: float = 0.0  # on the pooled features entering the head, in training only
    lora: LoRA | None = None  # adapters on the backbone's 3x3 and 1x1 convs (peft.mode=lora)
    block_widths: tuple[int, ...] | None = None  # basic blocks' inner widths (structured pruning)

    def setup(self) -> None:
        self.backbone = ResNetBackbone(
            self.stage_sizes, self.block_cls, stem=self.stem, width=self.width, dtype=self.dtype, lora=self.lora,
            block_widths=None if self.block_widths is None else tuple(self.block_widths)
        )
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype)

    def __call__(self, x: jax.Array, *, train: bool, freeze_backbone: bool = False) -> jax.Array:
        """A frozen backbone runs BN in inference mode (stats untouched) and gets no gradient."""
        features = self.backbone(x, use_running_average=(not train) or freeze_backbone)
        if freeze_backbone:
            features = jax.lax.stop_gradient(features)
        features = self.head_dropout(features, deterministic=not train)
        return self.head(features).astype(jnp.float32)
