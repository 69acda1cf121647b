"""Does XLA:CPU already fuse each BatchNorm with the GELU after it in the `fast` step?

Compiles the recipe's real train step (the Trainer's, as `fast_step.py` times it) and lists
each activation-sized fusion that holds a BatchNorm's normalisation (its sub/mul/rsqrt/div/add, by the
`op_name` metadata JAX writes into the HLO) and whether the same fusion also evaluates
GELU (`erfc`, as jax.nn.gelu's exact form lowers). A BatchNorm whose forward fusion also
holds the GELU needs no hand-written BN+GELU kernel for the forward value: the pair is
already one loop over memory. The other activation-sized fusions are the residuals that
autodiff keeps for the backward pass.

    .venv/bin/python benchmarks/fusions.py [--recipe fast_muon]
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
from fast_step import random_data

from jaxcifar import config as config_lib, stages

NORMALISE = re.compile(r"/(group\d/bn\d)/(?:sub|mul|rsqrt|div|add)$")


def compiled_step_text(recipe: str, batch_size: int | None) -> str:
    cfg = config_lib.load_recipe(recipe)
    if batch_size:
        cfg.batch_size = batch_size
    first = stages.build_step(cfg, random_data(2 * cfg.batch_size))
    return jax.jit(first.built.train_step).lower(first.state, next(first.stream.batches(0, 0))).compile().as_text()


def batch_norm_fusions(hlo_text: str) -> dict[str, list[str]]:
    """BatchNorm layer -> one line per forward fusion that reads its normalisation and
    writes a whole activation-sized (rank-4) tensor: its root op and whether it holds GELU."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for computation in hlo_text.split("\n\n"):
        if not computation.lstrip().startswith("%fused"):
            continue
        root = next(line for line in computation.splitlines() if "ROOT" in line)
        if not re.search(r"= f32\[[1-9]\d+,\d+,\d+,\d+\]", root):  # batch-sized, not [1,1,1,C]
            continue  # per-channel statistics, not a pass over the activations
        names = set(re.findall(r'op_name="([^"]*)"', computation))
        forward = {m.group(1) for n in names if "transpose(" not in n for m in [NORMALISE.search(n)] if m}
        named = re.search(r'op_name="[^"]*/([^"/]*)"', root)
        root_op = named.group(1) if named else root.split("=", 1)[1].split("(", 1)[0].split()[-1]
        gelu = any(n.endswith("/erfc") for n in names)
        for layer in forward:
            found[layer].append(f"{root_op}{' (with GELU)' if gelu else ''}")
    return dict(sorted(found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast", choices=("fast", "fast_muon"))
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's")
    args = parser.parse_args()
    for layer, fusions in batch_norm_fusions(compiled_step_text(args.recipe, args.batch_size)).items():
        print(f"{layer}: {len(fusions)} fusions: {', '.join(fusions)}")


if __name__ == "__main__":
    main()
