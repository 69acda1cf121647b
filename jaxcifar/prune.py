"""Pruning: global magnitude pruning through Optax (`--config.prune.sparsity=0.75`), and
structured removal of channels inside ResNet basic blocks (`--config.prune.channels=0.5`).

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

Structured (`prune.channels`, with `--init_from` a trained ResNet): the given fraction of
the basic blocks' inner channels (conv1's outputs = conv2's inputs) is removed, ranked by
|gamma| of the BatchNorm between them across all blocks (network slimming, Liu et al.
2017). The model is built narrower (`model_kwargs.block_widths`, recorded in the run's
config) and starts from the kept weights, then fine-tunes. The block outputs, which the
residual shortcuts share, keep their width. A narrower conv is a cheaper conv, so this
is the pruning that runs faster on a CPU.

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
from flax import traverse_util


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


# ----- structured: channels inside basic blocks -----
def _blocks(params: dict[str, Any]) -> list[str]:
    """Paths of the basic blocks (conv1 -> bn1 -> conv2 in one module), in the model's order."""
    blocks = [path.removesuffix("/bn1/scale") for path in params if path.endswith("/bn1/scale")]
    return sorted(b for b in blocks if f"{b}/conv1/kernel" in params and f"{b}/conv2/kernel" in params)


def channels_to_keep(params: dict[str, Any], fraction: float) -> dict[str, np.ndarray]:
    """{block path: the inner channels it keeps}, removing the `fraction` of all blocks'
    inner channels with the smallest |BatchNorm scale| (network slimming's ranking: bn1's
    gamma scales each channel's contribution), ranked across blocks, at least one per block."""
    blocks = _blocks(params)
    if not blocks:
        raise ValueError("prune.channels removes channels inside ResNet basic blocks (conv1 -> bn1 -> conv2); "
                         "this model has none. Use resnet18 or resnet18_imagenet.")
    gammas = {b: np.abs(np.asarray(params[f"{b}/bn1/scale"])) for b in blocks}
    ranked = np.sort(np.concatenate(list(gammas.values())))
    removed = int(np.floor(fraction * ranked.size))
    threshold = ranked[removed - 1] if removed else -1.0
    return {b: np.flatnonzero(g > threshold) if np.any(g > threshold) else np.array([int(np.argmax(g))])
            for b, g in gammas.items()}


def remove_channels(variables: dict, keep: dict[str, np.ndarray]) -> dict:
    """{'params', 'batch_stats'} with only the `keep` inner channels of each basic block: the
    weights of the narrower network `block_widths` describes."""
    params, stats = (dict(traverse_util.flatten_dict(variables[c], sep="/")) for c in ("params", "batch_stats"))
    for block, channels in keep.items():
        params[f"{block}/conv1/kernel"] = np.asarray(params[f"{block}/conv1/kernel"])[..., channels]
        params[f"{block}/conv2/kernel"] = np.asarray(params[f"{block}/conv2/kernel"])[:, :, channels, :]
        for tree, names in ((params, ("scale", "bias")), (stats, ("mean", "var"))):
            for name in names:
                tree[f"{block}/bn1/{name}"] = np.asarray(tree[f"{block}/bn1/{name}"])[channels]
    return {"params": traverse_util.unflatten_dict(params, sep="/"),
            "batch_stats": traverse_util.unflatten_dict(stats, sep="/")}


def slimmed(variables: dict, fraction: float) -> tuple[tuple[int, ...], dict]:
    """(block_widths, the variables of that narrower network) for `prune.channels=fraction`."""
    keep = channels_to_keep(traverse_util.flatten_dict(variables["params"], sep="/"), fraction)
    return tuple(len(keep[b]) for b in sorted(keep)), remove_channels(variables, keep)


def with_block_widths(config: ml_collections.ConfigDict, init_from: str | None) -> ml_collections.ConfigDict:
    """`config` with `model_kwargs.block_widths` set from the run it starts from, when
    `prune.channels` > 0 (the widths depend on that run's weights, so they are derived the
    same way on every resume); `config` itself otherwise."""
    if not config.prune.channels:
        return config
    from jaxcifar import checkpoint

    if not init_from:
        raise ValueError("prune.channels removes the channels of a trained run: pass --init_from its workdir.")
    widths, _ = slimmed(checkpoint.load_variables(init_from, "best")[0], config.prune.channels)
    config = config.copy_and_resolve_references()
    config.model_kwargs.block_widths = widths
    return config
