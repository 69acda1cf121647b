"""Load torchvision/timm ResNet checkpoints into this package's Flax ResNets.

torchvision and timm share the key layout (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.downsample.0.weight``, ``fc.bias``, ...). Every tensor is checked
against a template from ``model.init``: a mismatch raises instead of silently
zero-filling, and so do leftover checkpoint keys or unfilled Flax leaves.

If the checkpoint's ``fc`` has a different class count than the model's head
(e.g. ImageNet 1000 -> CIFAR 10), the template's freshly initialised head is
kept and only the backbone is loaded; this is logged at INFO level.
"""

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

logger = logging.getLogger(__name__)

Variables = dict[str, Any]
FlatPath = tuple[str, ...]  # (collection, module..., leaf), e.g. ("params", "head", "kernel")

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_BLOCK_KEY = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_DOWNSAMPLE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def _module_path(torch_module: str) -> FlatPath:
    """``layer1.0.downsample.1`` -> ``("backbone", "layer1_0", "downsample_bn")``."""
    if torch_module == "fc":
        return ("head",)
    match = _BLOCK_KEY.fullmatch(torch_module)
    if match is None:
        return ("backbone", torch_module)
    stage, block, inner = match.groups()
    return ("backbone", f"layer{stage}_{block}", _DOWNSAMPLE.get(inner, inner))


def _flax_target(key: str, value: np.ndarray) -> tuple[FlatPath, np.ndarray] | None:
    """Map one torch key + tensor to its Flax path and layout, or None if unknown."""
    torch_module, _, leaf = key.rpartition(".")
    module = _module_path(torch_module)
    if value.ndim == 4 and leaf == "weight":  # conv: OIHW -> HWIO
        return ("params", *module, "kernel"), value.transpose(2, 3, 1, 0)
    if module == ("head",):  # fc: (out, in) -> (in, out)
        if leaf == "weight":
            return ("params", "head", "kernel"), value.T
        return (("params", "head", "bias"), value) if leaf == "bias" else None
    if leaf in _BN_LEAVES:
        collection, name = _BN_LEAVES[leaf]
        return (collection, *module, name), value
    return None


def _head_matches(state_dict: Mapping[str, np.ndarray], template: Mapping[FlatPath, Any]) -> bool:
    """Whether the checkpoint's ``fc`` fits the template head (same class count)."""
    expected = template.get(("params", "head", "kernel"))
    fc = state_dict.get("fc.weight")
    return expected is not None and fc is not None and fc.T.shape == expected.shape


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], variables_template: Variables
) -> Variables:
    """Convert a torchvision-layout ResNet state dict into Flax ``{'params', 'batch_stats'}``.

    ``variables_template`` (from ``model.init``) fixes the expected tree and
    shapes; the result has exactly its structure and dtypes. Raises ValueError
    on any shape mismatch (naming the key and both shapes), on checkpoint keys
    with no Flax counterpart, and on Flax leaves the checkpoint did not fill.
    A head with a different class count is left as in the template.
    """
    template = traverse_util.flatten_dict(dict(variables_template))
    load_head = _head_matches(state_dict, template)
    if not load_head:
        logger.info("checkpoint fc does not match the model head; keeping the initialised head")

    flat = dict(template)
    filled: set[FlatPath] = set()
    unused: list[str] = []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or (key.startswith("fc.") and not load_head):
            continue
        target = _flax_target(key, np.asarray(value))
        if target is None or target[0] not in template:
            unused.append(key)
            continue
        path, array = target
        expected = template[path]
        if array.shape != expected.shape:
            raise ValueError(
                f"shape mismatch for {key!r} -> {'/'.join(path)}: checkpoint {array.shape} "
                f"(after transpose) vs model {expected.shape}"
            )
        flat[path] = jnp.asarray(array, dtype=expected.dtype)
        filled.add(path)

    if unused:
        raise ValueError(f"checkpoint keys with no matching model variable: {sorted(unused)}")
    missing = [
        "/".join(p) for p in template if p not in filled and (load_head or p[1] != "head")
    ]
    if missing:
        raise ValueError(f"model variables not found in the checkpoint: {sorted(missing)}")
    logger.info(
        "loaded %d tensors into the backbone%s", len(filled), " and head" if load_head else ""
    )
    return traverse_util.unflatten_dict(flat)


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``.safetensors`` without torch, anything else (``.pth``/``.pt``) with torch."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading {path.name} needs PyTorch (pip install torch); "
            "or convert the checkpoint to .safetensors, which loads without it"
        ) from err
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state_dict).__name__})")
    return {k: v.detach().float().numpy() for k, v in state_dict.items()}


def load_torch_resnet(
    path: str | Path,
    model: nn.Module,
    num_classes: int | None = None,
    rng: jax.Array | None = None,
) -> Variables:
    """Load a torchvision/timm ResNet checkpoint into ``model``'s variables.

    ``num_classes``, if given, must equal ``model.num_classes`` (a guard against
    building the model with the wrong head). ``rng`` seeds the template, i.e.
    the head that is kept when the checkpoint's class count differs.
    """
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model has {model.num_classes}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    # Param shapes do not depend on the image size (global average pool), so
    # a small dummy input keeps init cheap.
    template = model.init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    return convert_state_dict(read_torch_state_dict(path), template)
