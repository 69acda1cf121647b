"""Parameter-efficient fine-tuning: which parameters a run trains (`peft.mode`), LoRA's
merge into the kernels, and adapters (a run saved as only the parameters it changed, plus
the path of the run it started from).

Modes (`--config.peft.mode`), each on top of the stage's own `lr_multipliers`:
  full    every parameter (the default: nothing is restricted);
  linear  the head only; the backbone's BatchNorm runs in inference mode, as a frozen stage;
  bitfit  the head, every bias and every BatchNorm scale and bias (BitFit; Frankle et al.'s
          BatchNorm-only training);
  lora    the head and rank-`peft.rank` adapters on every 3x3 and 1x1 conv (`models.layers.Conv`);
          with `peft.train_norms`, also what bitfit trains (LoRA + BitFit + BatchNorm).

In `bitfit` and `lora` the backbone's BatchNorm runs in training mode, so its running
statistics are re-estimated on the new data. Why: the new task's images shift every
layer's activation statistics, the statistics cost nothing to adapt (two vectors per
BatchNorm), and a normalisation fitted to other data is what TinyTL and Frankle et al.
adapt first. They are therefore part of the adapter.

An adapter (`WORKDIR/adapter/`, written at the end of a PEFT run started with `--init_from`
a jaxcifar workdir) holds config.json, classes.json, adapter.json (the base run, its step,
and sizes) and adapter.msgpack (the trained leaves). `runs.load_run` resolves it against its
base, so evaluate, predict, export and serve take it as a `--workdir`. It is one msgpack file
written by process 0 rather than an Orbax checkpoint: it is an artefact to ship, small and
never resumed from; the run's resumable state stays in its Orbax checkpoints. The base is
recorded relative to the adapter (and absolute, as a fallback), so the two can be moved
together. Why not Hugging Face PEFT's `adapter_config.json` + `adapter_model.safetensors`:
no PEFT library could load it anyway (its base is a jaxcifar run, not a hub model, and it
carries BatchNorm statistics and a new head), so the familiar names would promise what the
files cannot do.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import flax.serialization
import jax
import ml_collections
import numpy as np
from flax import traverse_util

from jaxcifar.models.layers import LoRA
from jaxcifar.peft_fields import MODES

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.msgpack"
LORA_PARTS = ("lora_a", "lora_b")


def is_adapter_path(path: str) -> bool:
    """Whether the '/'-joined `path` is a LoRA adapter's, which no pretrained source holds."""
    return any(part in LORA_PARTS for part in path.split("/"))


def is_norm_or_bias_path(path: str) -> bool:
    """Whether the '/'-joined `path` is a bias or a BatchNorm scale: what bitfit trains."""
    return path.split("/")[-1] in ("bias", "scale")


def is_trainable(mode: str, path: str, train_norms: bool = False) -> bool:
    """Whether mode `mode` trains the parameter at '/'-joined `path` (e.g.
    'backbone/layer1_0/bn1/scale'). Every mode trains the head: the new task's classifier.
    `train_norms` (`peft.train_norms`, mode lora only) adds what bitfit trains to lora's."""
    parts = path.split("/")
    if mode == "full" or parts[0] == "head":
        return True
    if mode == "linear":
        return False
    if mode == "bitfit":
        return is_norm_or_bias_path(path)
    if mode == "lora":
        return is_adapter_path(path) or (train_norms and is_norm_or_bias_path(path))
    raise ValueError(f"unknown peft.mode {mode!r}; valid: {', '.join(MODES)}")


def lora_of(config: ml_collections.ConfigDict) -> LoRA | None:
    """The adapters the run's model carries: LoRA(rank, alpha) in mode `lora`, else none."""
    return LoRA(config.peft.rank, config.peft.alpha) if config.peft.mode == "lora" else None


def flat(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def merge_lora(params: Mapping, scale: float) -> dict:
    """`params` with each conv's adapter folded into its kernel, kernel + scale * A.B, and
    the adapters removed: the parameters of the same network without LoRA. Exact up to
    rounding, because a conv is linear in its kernel and `lora_b` is 1x1."""
    leaves = flat(params)
    merged = {path: value for path, value in leaves.items() if not is_adapter_path(path)}
    for path in leaves:
        if path.endswith("/lora_a/kernel"):
            conv = path.removesuffix("/lora_a/kernel")
            a, b = leaves[path], leaves[f"{conv}/lora_b/kernel"]  # (h, w, in, r), (1, 1, r, out)
            merged[f"{conv}/kernel"] = merged[f"{conv}/kernel"] + scale * np.einsum("hwir,ro->hwio", a, b[0, 0])
    return traverse_util.unflatten_dict(merged, sep="/")


# ----- adapters -----
def adapter_leaves(variables: Mapping, trainable_paths: set[str], batch_norm_trained: bool) -> dict[str, np.ndarray]:
    """The leaves of `variables` ({'params', 'batch_stats'}) a PEFT run changed: the
    parameters it trained, and the BatchNorm statistics when its backbone's BatchNorm ran in
    training mode. '/'-joined paths including the collection."""
    leaves = {f"params/{p}": np.asarray(v) for p, v in flat(variables["params"]).items() if p in trainable_paths}
    if batch_norm_trained:
        leaves.update({f"batch_stats/{p}": np.asarray(v) for p, v in flat(variables.get("batch_stats", {})).items()})
    return leaves


def apply_adapter(template: Mapping, base: Mapping, leaves: Mapping[str, Any], base_name: str) -> dict:
    """The run's variables: each leaf of `template` (the run's model's {'params',
    'batch_stats'}, shapes only) from the adapter's `leaves`, else from the base run's
    variables `base`, which must hold it with the same shape."""
    base_leaves = flat(base)
    out, problems = {}, []
    for path, spec in flat(template).items():
        value = leaves.get(path, base_leaves.get(path))
        if value is None:
            problems.append(f"{path}: in neither the adapter nor the base run")
        elif np.shape(value) != tuple(spec.shape):
            problems.append(f"{path}: {np.shape(value)} where the model has {tuple(spec.shape)}")
        else:
            out[path] = np.asarray(value, spec.dtype)
    if problems:
        raise ValueError(f"The adapter does not fit its base run {base_name}:\n  " + "\n  ".join(problems))
    return traverse_util.unflatten_dict(out, sep="/")


def write_adapter(run_dir: pathlib.Path, variables: Mapping, step: int, base: pathlib.Path, base_step: int,
                  leaves: Mapping[str, np.ndarray], rebuilt: Mapping) -> pathlib.Path:
    """Write `run_dir/adapter/`: `leaves` (from `adapter_leaves`) against the base run `base`
    at `base_step`. `rebuilt` is `apply_adapter`'s result from them, checked against the
    run's `variables` before anything is written, so an adapter always loads as the run."""
    rebuilt_leaves = flat(rebuilt)
    mismatched = [path for path, value in flat(variables).items()
                  if not np.allclose(np.asarray(value), rebuilt_leaves[path], rtol=1e-6, atol=0)]
    if mismatched:
        raise ValueError(f"Not writing an adapter for {run_dir}: base {base} + adapter differs from the run at "
                         f"{mismatched[:5]}; the run changed parameters its peft.mode does not train.")
    out = run_dir / ADAPTER_DIR
    out.mkdir(exist_ok=True)
    for name in ("config.json", "classes.json"):
        shutil.copyfile(run_dir / name, out / name)
    weights = flax.serialization.msgpack_serialize(traverse_util.unflatten_dict(dict(leaves), sep="/"))
    (out / WEIGHTS_FILE).write_bytes(weights)
    model_bytes = sum(np.asarray(v).nbytes for v in jax.tree_util.tree_leaves(variables))
    (out / ADAPTER_FILE).write_text(json.dumps({
        # Relative to the adapter, so an adapter and its base can move or ship together;
        # the absolute path is the fallback for an adapter copied away from its base.
        "base": os.path.relpath(base, out), "base_absolute": str(base), "base_step": base_step, "step": step,
        "adapter_parameters": int(sum(np.size(v) for v in leaves.values())),
        "adapter_bytes": len(weights), "model_bytes": model_bytes}, indent=2))
    return out


def is_adapter(workdir: pathlib.Path) -> bool:
    return (pathlib.Path(workdir) / ADAPTER_FILE).is_file()


def read_adapter(workdir: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter.json's record, the adapter's leaves by '/'-joined path)."""
    workdir = pathlib.Path(workdir)
    record = json.loads((workdir / ADAPTER_FILE).read_text())
    leaves = flat(flax.serialization.msgpack_restore((workdir / WEIGHTS_FILE).read_bytes()))
    return record, leaves


def base_run(workdir: pathlib.Path, record: dict) -> pathlib.Path:
    """The adapter's base run: where its relative path points from the adapter, if a run is
    there, else its recorded absolute path (adapters written before relative paths hold only
    an absolute `base`)."""
    relative = (pathlib.Path(workdir) / record["base"]).resolve()
    if (relative / "checkpoints").is_dir() or "base_absolute" not in record:
        return relative
    return pathlib.Path(record["base_absolute"])


def load_adapter(workdir: pathlib.Path, template: Mapping) -> tuple[dict, int]:
    """(variables, step) of the PEFT run saved as the adapter in `workdir`: its base run's
    variables at the recorded step, with the adapter's leaves in place. `template` is the
    run's model's {'params', 'batch_stats'} (shapes only)."""
    from jaxcifar import checkpoint

    record, leaves = read_adapter(workdir)
    base = base_run(workdir, record)
    try:
        base_variables, _ = checkpoint.load_variables(base, record["base_step"])
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"The adapter in {workdir} needs its base run {base} at step {record['base_step']}, which is not there "
            f"({e}). Restore that run, or evaluate the PEFT run's own workdir ({pathlib.Path(workdir).parent}), "
            "which holds full checkpoints.") from None
    return apply_adapter(template, base_variables, leaves, str(base)), record["step"]
