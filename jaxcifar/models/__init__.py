"""Model registry: every model has ``backbone`` and ``head`` submodules.

Contract: ``model.apply(variables, x, train=..., freeze_backbone=...)`` takes
normalised float32 NHWC images and returns float32 logits. Every model takes a
``dropout`` rate for the features entering its head; with ``train=True`` and a rate
above 0 it needs ``rngs={'dropout': key}``.
"""

from collections.abc import Callable
from functools import partial

import flax.linen as nn

from jaxcifar.models import airbench
from jaxcifar.models.airbench import Airbench, AirbenchBackbone
from jaxcifar.models.cnn import CNNBackbone, SimpleCNN
from jaxcifar.models.resnet import BasicBlock, Bottleneck, ResNet, ResNetBackbone
from jaxcifar.models.self_supervised import SelfSupervisedNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "resnet18": partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="cifar"),
    "resnet18_imagenet": partial(
        ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="imagenet"
    ),
    "resnet50": partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, stem="imagenet"),
    "airbench": Airbench,
}

# Each model's backbone alone (called as `backbone(x, use_running_average=...)` -> features),
# for networks that put something else than a classification head on it.
_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": CNNBackbone,
    "resnet18": partial(ResNetBackbone, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="cifar"),
    "resnet18_imagenet": partial(ResNetBackbone, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="imagenet"),
    "resnet50": partial(ResNetBackbone, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, stem="imagenet"),
    "airbench": AirbenchBackbone,
}

# Models whose initial parameters depend on the training data: (params, normalised sample) -> params.
DATA_DEPENDENT_INIT: dict[str, Callable] = {"airbench": airbench.init_from_data}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` (``dtype``, ``dropout``, ...) go to its constructor."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None
    return factory(num_classes=num_classes, **kwargs)


def create_self_supervised(name: str, projector_dims: tuple[int, ...], **kwargs) -> SelfSupervisedNet:
    """Model `name`'s backbone (built from the same `kwargs` as its classifier, minus the
    head's `dropout`) under a projector MLP of widths `projector_dims`."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    kwargs.pop("dropout", None)
    try:
        backbone = _BACKBONES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"model_kwargs {kwargs} do not fit the backbone of {name!r}: {e}") from None
    return SelfSupervisedNet(backbone, tuple(projector_dims))


__all__ = ["MODEL_NAMES", "ResNet", "SelfSupervisedNet", "SimpleCNN", "create_model", "create_self_supervised"]
