"""The `early_stopping` block of a config (jaxcifar/early_stopping.py), declared apart from
early_stopping.py so that a config is read without JAX or Flax (schema.py says why)."""

from __future__ import annotations

from jaxcifar import methods, schema


def watchable_metrics(objective: str) -> dict[str, bool]:
    """The logged metrics early stopping can watch in a run of `objective` (a method's eval
    metrics on the validation split, as history names them) -> whether higher is better.
    Only `val_` metrics: selection never reads the test split (data.eval_split)."""
    return {f"val_{name}": higher for name, higher in methods.info(objective).eval_metrics.items()}


def any_watchable_metric() -> tuple[str, ...]:
    """What `early_stopping.metric` may name, in a run of any registered method (read when
    asked: a method registered later adds its own)."""
    return tuple(dict.fromkeys(metric for name in methods.names() for metric in watchable_metrics(name)))


FIELDS = schema.block("early_stopping", (
    schema.Field("patience", 0, "end a stage after this many epochs in a row without improvement of "
                                "early_stopping.metric, then go on to the next stage; while on, every stage ends on "
                                "the weights of its best epoch; 0 = off", check=schema.in_range(0)),
    schema.Field("min_delta", 0.0, "the smallest change of the metric that counts as an improvement",
                 check=schema.in_range(0)),
    schema.Field("metric", "val_accuracy", "the validation metric early stopping watches (accuracy is maximised, "
                                           "loss minimised); needs data.validation_fraction > 0",
                 choices=any_watchable_metric),
))
