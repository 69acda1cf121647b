"""The weighted kNN classifier on backbone features (`ssl.knn_accuracy`), the run's
labelled train split as its bank: how solo-learn and lightly monitor a self-supervised run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxcifar import ssl

if TYPE_CHECKING:
    from jaxcifar.data import ArraySplit
    from jaxcifar.evaluators import Outputs


def evaluate(outputs: Outputs, split: ArraySplit) -> dict[str, float]:
    return {"knn_accuracy": ssl.knn_accuracy(outputs.features(outputs.bank), outputs.bank.labels,
                                             outputs.features(split), split.labels, outputs.num_classes,
                                             outputs.config.ssl)}
