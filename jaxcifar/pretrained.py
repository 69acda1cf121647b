"""Start a run from pretrained weights (`--init_from`): the backbone of an earlier
jaxcifar run, or published torchvision/timm ResNet weights.

The backbone must match the model exactly (every path and shape) or loading fails with
a message naming the mismatches - never a silent zero-fill or partial load. The head is
taken over only when its shapes match too (same number of classes); otherwise the
model's freshly initialised head is kept.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxcifar import peft, prune
from jaxcifar.checkpoint import load_variables
from jaxcifar.optim import path_str
from jaxcifar.steps import TrainState

log = logging.getLogger("jaxcifar")
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt")


def shape_mismatches(template: Any, source: Any) -> list[str]:
    """Paths missing from `source`, unexpected in it, or with a different shape."""
    want = {path_str(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(template)}
    got = {path_str(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(source)}
    problems = [f"{k}: missing" for k in want.keys() - got.keys()]
    problems += [f"{k}: not in the model" for k in got.keys() - want.keys()]
    problems += [f"{k}: checkpoint {got[k]} vs model {want[k]}" for k in want.keys() & got.keys() if got[k] != want[k]]
    return sorted(problems)


def new_head_message(head: dict, source_head: dict) -> str:
    """What happens to the head when the source's does not fit, in the user's terms."""
    classes = jax.tree_util.tree_leaves(head)[-1].shape[-1] if jax.tree_util.tree_leaves(head) else 0
    if not source_head:
        return f"the source has no classification head (a self-supervised backbone); training a new head for {classes} classes."
    source_classes = jax.tree_util.tree_leaves(source_head)[-1].shape[-1]
    return f"the source's head is for {source_classes} classes; training a new head for {classes} classes."


def merge_pretrained(state: TrainState, pretrained: dict[str, Any], source: str) -> TrainState:
    """Copy the pretrained backbone (and head, if it fits) into `state`, keeping shardings."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    merged = {}
    for collection, tree in variables.items():
        new_tree = dict(tree)
        for part in ("backbone", "head"):
            if part not in tree:
                continue
            src = pretrained.get(collection, {}).get(part, {})
            # LoRA adapters (peft.mode=lora) are the run's own: no pretrained source has them.
            own = peft.flat(tree[part])
            adapters = {path: leaf for path, leaf in own.items() if peft.is_adapter_path(path)}
            template = traverse_util.unflatten_dict({p: v for p, v in own.items() if p not in adapters}, sep="/")
            problems = shape_mismatches(template, src)
            if problems and part == "backbone":
                raise ValueError(f"--init_from {source}: the backbone does not fit this model:\n  "
                                 + "\n  ".join(problems))
            if problems:
                if collection == "params":
                    log.info("init_from: %s", new_head_message(template, src))
                continue
            loaded = jax.tree_util.tree_map(lambda t, s: jax.device_put(np.asarray(s, t.dtype), t.sharding),
                                            template, src)
            new_tree[part] = traverse_util.unflatten_dict({**peft.flat(loaded), **adapters}, sep="/")
        merged[collection] = new_tree
    return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])  # caller resets averages


def load_pretrained_backbone(source: str, state: TrainState, model: nn.Module,
                             remove_channels: float = 0.0) -> TrainState:
    """`state` with the backbone (and the head, if it fits) of `source`; with
    `remove_channels` > 0, the narrower backbone `prune.slimmed` cuts from it."""
    if pathlib.Path(source).suffix in TORCH_SUFFIXES:
        from jaxcifar.models.convert import convert_state_dict, read_torch_state_dict

        # The run's own variables are the template, so a head that cannot be converted
        # (different class count) stays the run's own initialisation.
        pretrained = convert_state_dict(read_torch_state_dict(source),
                                        {"params": state.params, "batch_stats": state.batch_stats})
    else:
        pretrained, step = load_variables(source, "best")
        log.info("init_from: using step %d of %s", step, source)
        if remove_channels:
            pretrained = prune.slimmed(pretrained, remove_channels)[1]
    return merge_pretrained(state, pretrained, source)
