"""summary.json: what a finished run reports (its reported weights and how they were chosen,
their metrics on every split, time, speed, parameter counts) and, for a PEFT run started
from a jaxcifar workdir, its adapter."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax

from jaxcifar import checkpoint, data as data_lib, optim, peft, prune, steps
from jaxcifar.pretrained import TORCH_SUFFIXES
from jaxcifar.progress import images_per_second

log = logging.getLogger("jaxcifar")


def summarize(trainer: Any, state: steps.TrainState, history: list[dict], totals: dict[str, float],
              stopped_early: list[dict], wall_seconds: float) -> dict:
    """The summary of a run that `trainer` (train.Trainer) trained to `state`."""
    reported, selection = reported_weights(trainer, state, history)
    metric = trainer.objective.metric
    summary = {
        "objective": trainer.config.objective,
        "metric": metric,  # the objective's headline: test_<metric>, val_<metric>, extra_eval_<metric>
        # Every test_/val_/extra_eval_ figure is of the reported weights: those evaluate, predict,
        # export and serve open by default, so their numbers match these.
        "selection": selection,
        **{f"test_{name}": value for name, value in trainer.evaluate(reported, trainer.data.eval).items()},
        **{f"val_{name}": value for name, value in trainer.evaluate(reported, trainer.data.validation).items()},
        "eval_split": trainer.config.data.eval_split or None,
        "eval_examples": len(trainer.data.eval) if trainer.data.eval is not None else 0,
        "validation_split": selection["split"],
        "validation_examples": len(trainer.data.validation) if trainer.data.validation is not None else 0,
        f"extra_eval_{metric}": {name: trainer.evaluate(reported, split)[metric]
                                 for name, split in trainer.data.extra_evals.items()},
        # Epochs trained; an early stop skips the rest of its stage (and state.step with it).
        "epochs_completed": len(history),
        "steps": len(history) * trainer.steps_per_epoch,
        "stopped_early": stopped_early,
        "wall_seconds": wall_seconds,
        "train_seconds": totals["train_seconds"],
        "compile_seconds": totals["compile_seconds"],
        "train_images_per_second": images_per_second(totals["images_trained"], totals["train_seconds"]),
        **parameter_summary(trainer, state.params),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "compute_dtype": trainer.compute_dtype.name,  # config.precision, resolved
        "config": trainer.config.to_dict(),
    }
    summary["adapter"] = write_adapter(trainer)
    return summary


def reported_weights(trainer: Any, state: steps.TrainState, history: list[dict]) -> tuple[steps.TrainState, dict]:
    """The weights a finished run reports, and how they were chosen: the checkpoint with the
    best validation metric when the run holds out a validation split, else the final
    weights (a run without one selects nothing). Never chosen on the test split."""
    best_step = trainer.checkpointer.best_step()  # None: no checkpoint carries a validation metric
    split = data_lib.validation_split_name(trainer.config.data) if trainer.data.validation is not None else None
    if best_step is not None and best_step != int(state.step):  # perhaps of an earlier stage
        target = trainer.checkpoint_target(trainer.checkpointer.restore_record(best_step), state)
        state, _ = trainer.checkpointer.restore(best_step, target)
    step = int(state.step) if best_step is None else best_step
    epoch = next((h["epoch"] for h in history if h["step"] == step), None)
    return state, {"split": split, "metric": f"val_{trainer.objective.metric}" if split else None,
                   "weights": "best" if split else "final", "step": step, "epoch": epoch}

def trained_anywhere(trainer: Any, params: Any) -> set[str]:
    """Paths of the parameters some stage trains."""
    return set().union(*(trainer.built(stage, params).trainable for stage in trainer.stages))

def parameter_summary(trainer: Any, params: Any) -> dict:
    """Parameter counts for summary.json: in all, trained per stage, and the sparsity of
    the pruned kernels (None without pruning)."""
    pruned = prune.prunable_leaves(trained_anywhere(trainer, params), params)
    return {"parameters": optim.count_parameters(params),
            "trainable_parameters": {stage.name: optim.count_parameters(params, trainer.built(stage, params).trainable)
                                     for stage in trainer.stages},
            "sparsity": prune.sparsity_of(params, pruned) if trainer.config.prune.sparsity else None}

def write_adapter(trainer: Any) -> dict | None:
    """A PEFT run started from a jaxcifar workdir is also saved as an adapter (peft.py):
    the best checkpoint's changed leaves, against the base run's best checkpoint. Returns
    adapter.json's record (None for a run that trains everything or has no workdir base)."""
    if (trainer.config.peft.mode == "full" or not trainer.init_from
            or pathlib.Path(trainer.init_from).suffix in TORCH_SUFFIXES):
        return None
    variables, step = checkpoint.load_variables(trainer.workdir.path, "best")
    base = pathlib.Path(trainer.init_from).absolute()
    base_variables, base_step = checkpoint.load_variables(base, "best")
    bn_trained = not all(trainer.built(stage, variables["params"]).frozen_backbone for stage in trainer.stages)
    leaves = peft.adapter_leaves(variables, trained_anywhere(trainer, variables["params"]), bn_trained)
    rebuilt = peft.apply_adapter(variables, base_variables, leaves, str(base))
    if not trainer.workdir.is_writer:
        return None
    out = peft.write_adapter(trainer.workdir.path, variables, step, base, base_step, leaves, rebuilt)
    record = peft.read_adapter(out)[0]
    log.info("Adapter: %s (%s of %s bytes) against %s.", out, f"{record['adapter_bytes']:,}",
             f"{record['model_bytes']:,}", base)
    return {"path": str(out), **record}
