"""The optimizer of a stage: parameter groups by path rules, schedules, `optax.multi_transform`.

Each parameter belongs to the first group (in config order) whose regex fully matches
its '/'-joined path, e.g. `backbone/layer1_0/conv1/kernel`; a parameter that matches no
rule is an error naming it. A stage gives each group a learning-rate multiplier, or None
to freeze it. Frozen groups get `optax.set_to_zero()` inside `multi_transform`: no
moments are allocated for them and no weight decay or momentum can ever move them.

A group can also train for only the first `group_epochs[group]` epochs of a stage (its
learning rate is zero afterwards, so neither momentum nor weight decay moves it), and scale
the stage's weight decay by `weight_decay_multipliers[group]` (e.g. airbench decays its
64x-learning-rate BatchNorm biases at 1/64 of the coupled rate, so every parameter decays
at the same speed).

Weight decay is coupled (L2 added to the gradient, as in torch.optim.SGD) and applies to
kernels only (ndim > 1) unless `weight_decay_on="all"`.

A group can use another optimizer than the stage's (`group_optimizers[group]`), e.g.
airbench94_muon's split: Muon on the conv filters, Nesterov SGD on everything else.

`peft.mode` narrows every stage further: a parameter the mode does not train (see
`peft.is_trainable`) is frozen like a frozen group, whatever its group's multiplier.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcifar import config as config_lib
from jaxcifar import peft

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
    if stage.schedule == "linear":  # airbench's triangle: lr_start_factor*lr -> lr -> lr_end_factor*lr
        start, end = stage.lr_start_factor * lr, stage.lr_end_factor * lr
        return optax.join_schedules(
            [optax.linear_schedule(start, lr, warmup), optax.linear_schedule(lr, end, total - warmup)], [warmup])
    raise ValueError(f"Unknown schedule {stage.schedule!r}")


def _decay_mask(stage: ml_collections.ConfigDict) -> Callable[[Any], Any] | None:
    if stage.weight_decay_on == "all":
        return None
    return lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def kernel_dimension_numbers(updates: Any) -> Any:
    """Muon's view of each conv/dense kernel (..., in, out) as a (fan_in, fan_out) matrix:
    every axis but the last is reduced over, as a conv reads a kh*kw*in patch per output."""
    return jax.tree_util.tree_map(
        lambda u: optax.contrib.MuonDimensionNumbers(reduction_axis=tuple(range(u.ndim - 1)), output_axis=u.ndim - 1),
        updates)


def renormalize_kernels() -> optax.GradientTransformation:
    """Turns a step `u` into one that first rescales each kernel to Frobenius norm
    sqrt(fan_out), then adds `u` (airbench94_muon's Muon, which normalises each filter
    tensor before its step). Why: with BatchNorm after every conv the kernels' scale does
    not change the function, but it sets the effective step size; holding it fixed makes
    Muon's fixed-size orthogonal steps a fixed-size angular change."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("renormalize_kernels needs the parameters: call tx.update(grads, state, params).")
        rescale = lambda p: p * (jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p) - 1.0)  # noqa: E731
        return jax.tree_util.tree_map(lambda u, p: u + rescale(p), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def muon(stage: ml_collections.ConfigDict, schedule: Callable) -> optax.GradientTransformation:
    """Muon as airbench94_muon uses it: Nesterov momentum (`muon_momentum`), orthogonalised
    by `muon_ns_steps` Newton-Schulz iterations, a step of `schedule`'s size, on kernels
    renormalised to norm sqrt(fan_out). No weight decay: the renormalisation already fixes
    the kernels' scale (config.validate refuses one).

    The momentum is optax.trace, PyTorch's buffer (buf = m buf + g; g + m buf), and
    optax.contrib.scale_by_muon only orthogonalises (its own momentum off, beta=0): its
    momentum is a bias-corrected average whose Nesterov mix differs from airbench's in the
    first steps, and this recipe is meant to be the record's, step for step."""
    return optax.chain(
        optax.trace(decay=stage.muon_momentum, nesterov=True),
        optax.contrib.scale_by_muon(ns_steps=stage.muon_ns_steps, beta=0.0, nesterov=False, eps=1e-7,
                                    weight_dimension_numbers=kernel_dimension_numbers),
        optax.scale_by_learning_rate(schedule),
        renormalize_kernels())


def group_optimizer(stage: ml_collections.ConfigDict, optimizer: str, schedule: Callable,
                    weight_decay: float) -> optax.GradientTransformation:
    """The update rule of one trainable group (`optimizer`: the stage's, or the group's
    `group_optimizers` entry), with `schedule` and `weight_decay` already scaled for it."""
    mask = _decay_mask(stage)
    if optimizer == "muon":
        return muon(stage, schedule)
    if optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask=mask),
            optax.sgd(schedule, momentum=stage.momentum or None, nesterov=stage.nesterov))
    if optimizer == "adam":  # coupled L2 as in torch.optim.Adam / Keras Adam
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask),
                           optax.adam(schedule, b1=stage.b1, b2=stage.b2))
    if optimizer == "adamw":
        return optax.adamw(schedule, b1=stage.b1, b2=stage.b2, weight_decay=weight_decay, mask=mask)
    raise ValueError(f"Unknown optimizer {optimizer!r}")


def group_schedule(schedule: Callable, multiplier: float, train_steps: int | None) -> Callable:
    """The stage schedule times the group's multiplier, and zero from step `train_steps` on."""
    if train_steps is None:
        return lambda step: multiplier * schedule(step)
    return lambda step: jnp.where(step < train_steps, multiplier * schedule(step), 0.0)


def make_optimizer(stage: ml_collections.ConfigDict, param_groups: Mapping[str, str], params: Any,
                   steps_per_epoch: int, peft_mode: str = "full",
                   peft_train_norms: bool = False) -> tuple[optax.GradientTransformation, Any]:
    """(multi_transform over the groups, the label tree). Groups with multiplier None are
    frozen, and so is every parameter that `peft_mode` (with `peft_train_norms`) does not
    train (peft.is_trainable)."""
    schedule = make_schedule(stage, steps_per_epoch)
    transforms = {FROZEN: optax.set_to_zero()}
    group_of_label = {}
    for group, multiplier in stage.lr_multipliers.items():
        if multiplier is None:
            group_of_label[group] = FROZEN
        else:
            epochs = stage.group_epochs.get(group)
            train_steps = None if epochs is None else round(epochs * steps_per_epoch)
            weight_decay = stage.weight_decay * stage.weight_decay_multipliers.get(group, 1.0)
            transforms[group] = group_optimizer(stage, stage.group_optimizers.get(group, stage.optimizer),
                                                group_schedule(schedule, multiplier, train_steps), weight_decay)
            group_of_label[group] = group
    labels = jax.tree_util.tree_map_with_path(
        lambda path, group: (group_of_label[group] if peft.is_trainable(peft_mode, path_str(path), peft_train_norms)
                             else FROZEN),
        param_labels(params, param_groups))
    check_muon_shapes(stage, labels, params)
    return optax.multi_transform(transforms, labels), labels


def check_muon_shapes(stage: ml_collections.ConfigDict, labels: Any, params: Any) -> None:
    """Muon orthogonalises matrices: a vector (a bias, a BatchNorm parameter) in a Muon group
    is a config error, named here with the fix."""
    muon_groups = set(config_lib.muon_groups(stage))
    vectors = [f"{path_str(path)} {leaf.shape}" for (path, leaf), label in
               zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(labels))
               if label in muon_groups and leaf.ndim < 2]
    if vectors:
        raise ValueError(f"Muon updates matrices (conv and dense kernels) only, but its groups "
                         f"{sorted(muon_groups)} hold {vectors}. Give biases and BatchNorm parameters their own "
                         "param_groups rule, placed first, and an sgd/adam group_optimizers entry.")


def trainable_paths(labels: Any) -> set[str]:
    """The '/'-joined paths of the parameters a label tree trains."""
    return {path_str(path) for path, label in jax.tree_util.tree_leaves_with_path(labels) if label != FROZEN}


def count_parameters(params: Any, paths: set[str] | None = None) -> int:
    """Number of scalars in `params`, or in its leaves at `paths` only."""
    return int(sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if paths is None or path_str(path) in paths))


def is_subtree_frozen(labels: Any, prefix: str) -> bool:
    """Whether every parameter under top-level key `prefix` (e.g. 'backbone') is frozen."""
    sub = labels.get(prefix) if isinstance(labels, Mapping) else None
    leaves = jax.tree_util.tree_leaves(sub)
    return bool(leaves) and all(l == FROZEN for l in leaves)
