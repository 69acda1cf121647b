"""The optimizer of a stage: parameter groups by path rules, schedules, `optax.multi_transform`.

Each parameter belongs to the first group (in config order) whose regex fully matches
its '/'-joined path, e.g. `backbone/layer1_0/conv1/kernel`; a parameter that matches no
rule is an error naming it. A stage gives each group a learning-rate multiplier, or None
to freeze it. Frozen groups get `optax.set_to_zero()` inside `multi_transform`: no
moments are allocated for them and no weight decay or momentum can ever move them.

Weight decay applies to kernels only (ndim > 1): never to biases or BatchNorm.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import ml_collections
import optax

FROZEN = "__frozen__"


def path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_labels(params: Any, rules: Mapping[str, str]) -> Any:
    """Tree like `params` with each leaf replaced by its group name."""
    compiled = [(name, re.compile(rx)) for name, rx in rules.items()]
    unmatched = []

    def label(path, _):
        p = path_str(path)
        for name, rx in compiled:
            if rx.fullmatch(p):
                return name
        unmatched.append(p)
        return None

    labels = jax.tree_util.tree_map_with_path(label, params)
    if unmatched:
        raise ValueError(f"Parameters matched by no param_groups rule {dict(rules)}: {unmatched}. "
                         "Add a rule (e.g. a catch-all '.*' last) so every parameter belongs to a group.")
    return labels


def make_schedule(stage: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step of the stage (counted from the stage's first step)."""
    total = max(1, round(stage.epochs * steps_per_epoch))
    warmup = min(total - 1, round(stage.warmup_epochs * steps_per_epoch))
    lr = stage.lr
    if stage.schedule == "constant":
        return optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    if stage.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)
    if stage.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr, pct_start=max(warmup, 1) / total)
    if stage.schedule == "linear":  # airbench-style triangle: up to lr, then linearly to 0
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, 0.0, total - warmup)], [warmup])
    raise ValueError(f"Unknown schedule {stage.schedule!r}")


def _decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def group_optimizer(stage: ml_collections.ConfigDict, schedule: Callable) -> optax.GradientTransformation:
    """The update rule of one trainable group, with `schedule` already scaled by its multiplier."""
    if stage.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(stage.weight_decay, mask=_decay_mask),
            optax.sgd(schedule, momentum=stage.momentum or None, nesterov=stage.nesterov))
    if stage.optimizer == "adam":  # coupled L2 as in torch.optim.Adam / Keras Adam
        return optax.chain(optax.add_decayed_weights(stage.weight_decay, mask=_decay_mask),
                           optax.adam(schedule, b1=stage.b1, b2=stage.b2))
    if stage.optimizer == "adamw":
        return optax.adamw(schedule, b1=stage.b1, b2=stage.b2, weight_decay=stage.weight_decay, mask=_decay_mask)
    raise ValueError(f"Unknown optimizer {stage.optimizer!r}")


def make_optimizer(stage: ml_collections.ConfigDict, param_groups: Mapping[str, str], params: Any,
                   steps_per_epoch: int) -> tuple[optax.GradientTransformation, Any]:
    """(multi_transform over the groups, the label tree). Groups with multiplier None are frozen."""
    schedule = make_schedule(stage, steps_per_epoch)
    transforms = {FROZEN: optax.set_to_zero()}
    group_of_label = {}
    for group, multiplier in stage.lr_multipliers.items():
        if multiplier is None:
            group_of_label[group] = FROZEN
        else:
            transforms[group] = group_optimizer(stage, lambda step, m=multiplier: m * schedule(step))
            group_of_label[group] = group
    labels = jax.tree_util.tree_map(lambda g: group_of_label[g], param_labels(params, param_groups))
    return optax.multi_transform(transforms, labels), labels


def is_subtree_frozen(labels: Any, prefix: str) -> bool:
    """Whether every parameter under top-level key `prefix` (e.g. 'backbone') is frozen."""
    sub = labels.get(prefix) if isinstance(labels, Mapping) else None
    leaves = jax.tree_util.tree_leaves(sub)
    return bool(leaves) and all(l == FROZEN for l in leaves)
