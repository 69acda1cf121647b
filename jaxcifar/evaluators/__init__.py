"""Evaluators: what a set of weights is measured by, one file each, behind one registry.

    classification.py  loss and accuracy of the class logits (with the run's test-time augmentation)
    knn.py             the weighted kNN classifier on backbone features, the train split as its bank
    linear_probe.py    a softmax regression fitted on the train split's frozen backbone features

Training measures each epoch's weights with the evaluators its method names
(`methods.MethodInfo.evaluators`), and `python -m jaxcifar.evaluate` measures a trained run
with the same functions (adding the linear probe for a backbone run: fitting it every epoch
would cost more than the epoch). An evaluator is a function `(outputs, split) -> {metric:
value}`: `outputs` (the `Outputs` protocol below) computes what it reads of the weights, so
the same function runs on the training mesh and on a run opened from its checkpoint. A new
evaluator is one file plus one `register` call.

Why light entries naming 'module:attribute': config validation, early stopping's watchable
metrics and --help read an evaluator's metrics without importing JAX, as methods' do.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from jaxcifar.data import ArraySplit


class Outputs(Protocol):
    """What an evaluator reads of the one set of weights it measures."""

    config: Any  # the run's config (its test-time augmentation, the kNN's k and temperature)
    num_classes: int
    bank: ArraySplit  # the labelled images a kNN or a probe learns from: the run's train split

    def features(self, split: ArraySplit) -> np.ndarray:
        """Backbone features of every image of `split`, in order."""

    def logits(self, split: ArraySplit) -> np.ndarray:
        """Class logits of every image of `split`, in order (a classifier's only)."""


@dataclasses.dataclass(frozen=True)
class EvaluatorInfo:
    """A registry entry: the metrics an evaluator returns, without importing it."""

    name: str
    doc: str  # one line
    factory: str  # 'module:attribute' of a function (outputs: Outputs, split) -> {metric: value}
    metrics: dict[str, bool]  # metric -> True if higher is better; in display order


_REGISTRY: dict[str, EvaluatorInfo] = {}


def register(info: EvaluatorInfo) -> None:
    """Add an evaluator; a method's registry entry can name it from now on."""
    if info.name in _REGISTRY and _REGISTRY[info.name] != info:
        raise ValueError(f"A different evaluator named {info.name!r} is already registered.")
    _REGISTRY[info.name] = info


def info(name: str) -> EvaluatorInfo:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown evaluator {name!r}; registered evaluators: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def function(name: str) -> Callable[[Outputs, ArraySplit], dict[str, float]]:
    module, attribute = info(name).factory.split(":")
    return getattr(importlib.import_module(module), attribute)


def evaluate(names: tuple[str, ...], outputs: Outputs, split: ArraySplit) -> dict[str, float]:
    """The metrics of every evaluator in `names` on `split`, in their order."""
    return {metric: value for name in names for metric, value in function(name)(outputs, split).items()}


register(EvaluatorInfo("classification", "loss and accuracy of the class logits",
                       "jaxcifar.evaluators.classification:evaluate", {"loss": False, "accuracy": True}))
register(EvaluatorInfo("knn", "weighted kNN on backbone features, the labelled train split as its bank",
                       "jaxcifar.evaluators.knn:evaluate", {"knn_accuracy": True}))
register(EvaluatorInfo("linear_probe", "softmax regression on the train split's frozen backbone features",
                       "jaxcifar.evaluators.linear_probe:evaluate", {"linear_probe_accuracy": True}))
