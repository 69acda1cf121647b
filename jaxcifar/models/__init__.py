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
from jaxcifar.models.airbench import Airbench
from jaxcifar.models.cnn import SimpleCNN
from jaxcifar.models.resnet import BasicBlock, Bottleneck, ResNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "resnet18": partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="cifar"),
    "resnet18_imagenet": partial(
        ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="imagenet"
    ),
    "resnet50": partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, stem="imagenet"),
    "airbench": Airbench,
}

# Models whose initial parameters depend on the training data: (params, normalised sample) -> params.
DATA_DEPENDENT_INIT: dict[str, Callable] = {"airbench": airbench.init_from_data}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model; ``kwargs`` (``dtype``, ``input_size``, ``dropout``) go to its constructor."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None
    return factory(num_classes=num_classes, **kwargs)


__all__ = ["MODEL_NAMES", "ResNet", "SimpleCNN", "create_model"]
