"""Global magnitude pruning through Optax (`--config.prune.sparsity=0.75`).

The stage's optimizer is wrapped (`magnitude_pruning`) so that, after each update, the
weights outside a mask are set to exactly zero and stay there. The mask is recomputed every
`prune.every_steps` steps: it keeps the largest-magnitude weights across all prunable
kernels together (global, not per layer), and the pruned fraction rises from 0 to
`prune.sparsity` along Zhu & Gupta's cubic schedule, s(t) = s (1 - (1 - t/T)^3), over the
first `prune.ramp_fraction` of the stage, then holds. Pruned weights are zero, so they have
the smallest magnitudes and are never chosen again: sparsity only grows (the optimizer's
momentum keeps proposing updates to them, which are discarded).

Prunable: the kernels (ndim > 1) the stage trains; biases, BatchNorm and frozen parameters
(airbench's whitening kernel) are left alone. The mask lives in the optimizer state, so it is
checkpointed and resumed with it; a fresh optimizer state (a new stage) starts its mask
from the weights that are already zero.

Lookahead and EMA are refused with pruning: their averaged copies of a pruned weight decay
towards zero without reaching it, and lookahead would copy them back into the weights.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


KEEP_ALL = np.ones((), bool)  # the mask of a leaf that is not pruned


class PruningState(NamedTuple):
    inner: optax.OptState
    mask: Any  # per leaf: bool array of the weights kept (prunable leaves), scalar True (others)
    count: jax.Array  # updates applied since this state was created


def sparsity_schedule(sparsity: float, ramp_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Zhu & Gupta's cubic ramp from 0 to `sparsity` over `ramp_steps` steps, then flat."""
    def schedule(step):
        progress = jnp.minimum(step / max(ramp_steps, 1), 1.0)
        return sparsity * (1.0 - (1.0 - progress) ** 3)
    return schedule


def global_magnitude_mask(params: Any, prunable: Any, sparsity: jax.Array) -> Any:
    """True for the weights to keep: all but the `sparsity` fraction of smallest |w| across
    every prunable leaf together (ties at the threshold are pruned)."""
    leaves = [jnp.abs(p).ravel() for p, keep in zip(jax.tree_util.tree_leaves(params),
                                                    jax.tree_util.tree_leaves(prunable)) if keep]
    magnitudes = jnp.sort(jnp.concatenate(leaves))
    pruned = jnp.floor(sparsity * magnitudes.size).astype(jnp.int32)
    threshold = jnp.where(pruned > 0, magnitudes[jnp.maximum(pruned - 1, 0)], -1.0)
    return jax.tree_util.tree_map(lambda p, keep: jnp.abs(p) > threshold if keep else KEEP_ALL, params, prunable)


def magnitude_pruning(inner: optax.GradientTransformation, prunable: Any, schedule: Callable[[jax.Array], jax.Array],
                      every_steps: int) -> optax.GradientTransformation:
    """`inner`, then: every `every_steps` updates a new global magnitude mask at
    `schedule(count)` sparsity; weights outside the mask are set to zero by the update."""

    def init(params):
        mask = jax.tree_util.tree_map(lambda p, keep: p != 0 if keep else KEEP_ALL, params, prunable)
        return PruningState(inner.init(params), mask, jnp.zeros((), jnp.int32))

    def update(updates, state, params):
        updates, inner_state = inner.update(updates, state.inner, params)
        # The weights after this update, pruned ones at zero: the optimizer's momentum keeps
        # proposing updates to them, which must neither move them nor win them a place back.
        new_params = jax.tree_util.tree_map(lambda p, u, keep: jnp.where(keep, p + u, 0), params, updates, state.mask)
        count = state.count + 1
        mask = jax.lax.cond(count % every_steps == 0,
                            lambda: global_magnitude_mask(new_params, prunable, schedule(count)), lambda: state.mask)
        # An update that lands each pruned weight on exactly zero.
        updates = jax.tree_util.tree_map(lambda u, p, keep: jnp.where(keep, u, -p), updates, params, mask)
        return updates, PruningState(inner_state, mask, count)

    return optax.GradientTransformation(init, update)


def prunable_leaves(trainable: set[str], params: Any) -> Any:
    """True for the kernels (ndim > 1) among the '/'-joined `trainable` paths."""
    from jaxcifar.optim import path_str

    return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim > 1 and path_str(path) in trainable, params)


def wrap(tx: optax.GradientTransformation, config: ml_collections.ConfigDict, trainable: set[str], params: Any,
         stage_steps: int) -> optax.GradientTransformation:
    """The stage's optimizer with pruning when `prune.sparsity` > 0, else `tx` itself."""
    if config.prune.sparsity <= 0:
        return tx
    prunable = prunable_leaves(trainable, params)
    if not any(jax.tree_util.tree_leaves(prunable)):
        raise ValueError("prune.sparsity > 0, but this stage trains no kernel to prune; freeze fewer groups.")
    schedule = sparsity_schedule(config.prune.sparsity, round(config.prune.ramp_fraction * stage_steps))
    return magnitude_pruning(tx, prunable, schedule, config.prune.every_steps)


def sparsity_of(params: Any, prunable: Any) -> float:
    """Fraction of exact zeros among the prunable weights."""
    leaves = [p for p, keep in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(prunable)) if keep]
    return float(sum(jnp.sum(p == 0) for p in leaves) / sum(p.size for p in leaves))
