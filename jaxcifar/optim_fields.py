"""The optimisation fields of a config: the parameter groups and every stage's optimizer
and schedule (jaxcifar/optim.py). Each of them but `param_groups` is a stage field: its
top-level value is the default of every stage, and a stage may override it. Declared apart
from optim.py so that a config is read without JAX or Optax (schema.py says why)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxcifar import schema

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")


def _known_optimizers(group_optimizers: Any) -> str:
    """Names the first group whose optimizer is unknown, so the user knows which entry to fix."""
    unknown = [(group, name) for group, name in group_optimizers.items() if name not in OPTIMIZERS]
    return "" if not unknown else f"{unknown[0][1]!r} (group {unknown[0][0]!r}) is not an optimizer: " + schema.use(OPTIMIZERS)


_STAGE_FIELDS = tuple(dataclasses.replace(field, stage=True) for field in (
    schema.Field("epochs", 10, "epochs of the run (or of each stage that does not set its own)",
                 check=schema.in_range(0)),
    schema.Field("optimizer", "sgd", "Optax optimizer (muon: conv and dense kernels only; see group_optimizers)",
                 choices=OPTIMIZERS),
    schema.Field("lr", 0.1, "peak learning rate", check=schema.positive),
    schema.Field("momentum", 0.9, "sgd momentum"),
    schema.Field("nesterov", True, "sgd: Nesterov momentum"),
    schema.Field("b1", 0.9, "adam/adamw first-moment decay"),
    schema.Field("b2", 0.999, "adam/adamw second-moment decay"),
    schema.Field("weight_decay", 5e-4, "coupled (L2) weight decay; never applied to frozen parameters"),
    schema.Field("weight_decay_on", "kernels", "kernels = not biases or BatchNorm parameters; all = every parameter",
                 choices=("kernels", "all")),
    schema.Field("weight_decay_multipliers", {}, "group -> factor on weight_decay (default 1)", keyed=True),
    schema.Field("schedule", "cosine", "learning-rate schedule after a linear warmup",
                 choices=("constant", "cosine", "onecycle", "linear")),
    schema.Field("warmup_epochs", 1.0, "linear warmup from 0 (fractions allowed)"),
    schema.Field("lr_start_factor", 0.0, "linear schedule: starts at lr_start_factor * lr ..."),
    schema.Field("lr_end_factor", 0.0, "... and ends at lr_end_factor * lr"),
    schema.Field("lr_multipliers", {"all": 1.0}, "group -> learning-rate multiplier; None freezes the group",
                 keyed=True),
    schema.Field("group_epochs", {}, "group -> trains only during its first N epochs of the stage", keyed=True),
    schema.Field("group_optimizers", {}, "group -> optimizer of that group instead of `optimizer`, e.g. "
                                         "{'filters': 'muon'}", keyed=True, check=_known_optimizers),
    schema.Field("muon_momentum", 0.95, "muon: Nesterov momentum of the orthogonalised update"),
    schema.Field("muon_ns_steps", 5, "muon: Newton-Schulz iterations per step"),
))

FIELDS = (
    schema.Field("param_groups", {"all": ".*"}, "group name -> regex over '/'-joined parameter paths; first match "
                                                "wins and every parameter must match one", keyed=True),
    *_STAGE_FIELDS,
)
