"""The training loop: `fit(config, workdir)` (its command line, `python -m jaxcifar.train`, is
jaxcifar/cli/train.py).

Side effects live here (data loading, logging, checkpoints, signals); the math is in
steps.py, optim.py and augment.py. Running the same command on the same workdir resumes
from the latest good checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Iterator

import jax
import numpy as np
import ml_collections
import optax
from tqdm.auto import tqdm

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import augment, batch_order, checkpoint, early_stopping, methods, models, optim, parallel, peft, precision, prune, steps
from jaxcifar.checkpoint import METRIC, STAGE_BEST, Checkpointer
from jaxcifar.methods.base import Evaluator, Method, StageContext
from jaxcifar.pretrained import TORCH_SUFFIXES, load_pretrained_backbone
from jaxcifar.workdir import Workdir

log = logging.getLogger("jaxcifar")


def check_data_fits(config: ml_collections.ConfigDict, data: data_lib.Data) -> None:
    """Refuse a config that cannot train on `data`, saying which flag to change."""
    n = len(data.train)
    if config.batch_size > n:
        fits = max(jax.device_count(), 2 ** (n.bit_length() - 1) // jax.device_count() * jax.device_count())
        raise ValueError(f"batch_size={config.batch_size} is larger than the {n} training examples: pass "
                         f"--config.batch_size=N with N at most {n}, e.g. --config.batch_size={fits}.")
    if early_stopping.is_enabled(config) and data.validation is None:
        raise ValueError("early stopping picks epochs on a validation split, and this data has none: hold one out "
                         "with --config.data.validation_fraction=0.1 (or pass data.Data(validation=...)).")


def check_streams(method: Method, config: ml_collections.ConfigDict, data: data_lib.Data) -> None:
    """Refuse a run whose method reads a stream it cannot get."""
    if not method.unlabeled_ratio:
        return
    if data.unlabeled is None:
        raise ValueError(f"objective={config.objective!r} learns from unlabelled images, and this run has none: set "
                         "--config.data.examples_per_class=N (the rest of the train split is then used without its "
                         "labels), or with data.image_folder=DIR put images in DIR/unlabeled/.")
    if config.data.scan_epoch:
        raise ValueError(f"objective={config.objective!r} reads unlabelled images, which a scanned epoch does not "
                         "carry yet: set --config.data.scan_epoch=False.")


@dataclasses.dataclass
class Stage:
    """One stage of the run with its epoch range and compiled step."""

    index: int
    name: str
    config: ml_collections.ConfigDict
    first_epoch: int
    end_epoch: int

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


def plan_stages(config: ml_collections.ConfigDict) -> list[Stage]:
    out, epoch = [], 0
    for i, (name, stage_cfg) in enumerate(config_lib.stage_plan(config)):
        out.append(Stage(i, name, stage_cfg, epoch, epoch + stage_cfg.epochs))
        epoch += stage_cfg.epochs
    return out


def stage_of_epoch(stages: list[Stage], epoch: int) -> Stage:
    return next((s for s in stages if s.first_epoch <= epoch < s.end_epoch), stages[-1])


@dataclasses.dataclass(frozen=True)
class BuiltStage:
    tx: optax.GradientTransformation
    train_step: Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]  # pure, not yet jitted
    trainable: set[str]  # '/'-joined paths of the parameters the stage trains
    frozen_backbone: bool  # no backbone parameter trains: its BatchNorm runs in inference mode


def build_stage(method: Method, config: ml_collections.ConfigDict, stage: Stage, params: Any,
                steps_per_epoch: int) -> BuiltStage:
    """The one place a stage's step is built, for the loop and for benchmarks/: the stage's
    optimizer over the parameter groups and `peft.mode`, and the method's step, told
    whether any backbone parameter trains (if none, its BatchNorm runs in inference mode)
    and the stage's length (lookahead's schedule)."""
    tx, labels = optim.make_optimizer(stage.config, config.param_groups, params, steps_per_epoch, config.peft.mode)
    trainable = optim.trainable_paths(labels)
    frozen_backbone = optim.is_subtree_frozen(labels, "backbone")
    stage_steps = (stage.first_epoch * steps_per_epoch, (stage.end_epoch - stage.first_epoch) * steps_per_epoch)
    tx = prune.wrap(tx, config, trainable, params, stage_steps[1])
    train_step = method.train_step(tx, StageContext(steps_per_epoch, frozen_backbone, stage_steps))
    return BuiltStage(tx, train_step, trainable, frozen_backbone)


class StopRequested(Exception):
    """SIGTERM/SIGINT reached this process or, in a multi-process run, another one; every
    process stopped at the same step and a checkpoint has been written."""

    def __init__(self, signum: int, step: int, workdir: pathlib.Path):
        super().__init__(f"Stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved in {workdir}. "
                         "Run the same command again to resume.")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """What a shell reports for a tool interrupted by this signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


class NonFiniteLoss(FloatingPointError):
    pass


class Trainer:
    """Holds what a run needs between epochs: mesh, objective (with its model), data,
    compiled steps, writers."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data: data_lib.Data,
                 init_from: str | None = None, overwrite: bool = False):
        self.config = config
        self.mesh = parallel.make_mesh()
        config_lib.validate(config, jax.device_count())
        check_data_fits(config, data)  # before the workdir is touched: a refused start leaves nothing behind
        self.workdir = Workdir(workdir, config, overwrite=overwrite, class_names=data.class_names)
        self.data = data
        self.objective = methods.create(config, data.num_classes)
        self.model = self.objective.model
        self.compute_dtype, reason = precision.compute_dtype(config.precision)
        log.info("The network computes in %s (%s); its parameters and optimizer state are float32.",
                 self.compute_dtype.name, reason)
        check_streams(self.objective, config, data)
        self.stages = plan_stages(config)
        if config.data.scan_epoch and jax.default_backend() == "cpu":
            log.warning("data.scan_epoch=True on a CPU: measured 25x slower than per-step dispatch for simple_cnn "
                        "(docs/design.md, 'An epoch can run as one lax.scan'). It is meant for accelerators.")
        self.steps_per_epoch = batch_order.steps_per_epoch(len(data.train), config.batch_size)
        self.checkpointer = Checkpointer(self.workdir.path, keep=config.keep_checkpoints)
        self.init_from = init_from
        self.replicated = parallel.replicated(self.mesh)
        self.evaluator = Evaluator(self.mesh, config.eval_batch_size, data.train)
        self._built: dict[int, BuiltStage] = {}  # stage index -> its optimizer and step
        self._train_steps: dict[int, Any] = {}  # stage index -> jitted train step
        self._epoch_scans: dict[tuple[int, int], Any] = {}  # (stage index, steps) -> compiled epoch scan
        self._warm: set[int] = set()  # stages whose step has compiled in this process
        self._stop_signal: int | None = None
        self._resident: dict | None = None  # device-resident train split (data.device_resident)

    # ----- state -----
    def initial_state(self) -> steps.TrainState:
        rng = jax.random.key(self.config.seed)
        size = self.config.data.image_size
        create = lambda: steps.create_state(self.model, rng, (1, size, size, 3),  # noqa: E731
                                            ema=self.config.ema_decay > 0,
                                            lookahead=self.config.lookahead_every > 0)
        state = jax.jit(create, out_shardings=self.replicated)()
        data_init = models.DATA_DEPENDENT_INIT.get(self.config.model)
        if data_init is not None:  # e.g. airbench's whitening layer, from 5,000 training images
            sample = augment.model_input(self.data.train.images[:5000], size, self.config.augment.normalization)
            state = state.replace(params=jax.device_put(data_init(state.params, np.asarray(sample)), self.replicated))
        if self.init_from:
            state = load_pretrained_backbone(self.init_from, state, self.model, self.config.prune.channels)
        state = steps.reset_averages(state)
        # The method's own state (a momentum teacher, ...) starts from the weights the run starts from.
        return state.replace(method_state=jax.jit(self.objective.init_state, out_shardings=self.replicated)(state))

    def built(self, stage: Stage, params: Any) -> BuiltStage:
        if stage.index not in self._built:
            built = build_stage(self.objective, self.config, stage, params, self.steps_per_epoch)
            total, trained = optim.count_parameters(params), optim.count_parameters(params, built.trainable)
            if stage.epochs:  # a stage of 0 epochs is built for the summary's counts, but trains nothing
                log.info("Stage %r trains %s of %s parameters (%.2f%%; peft.mode=%s).", stage.name, f"{trained:,}",
                         f"{total:,}", 100 * trained / total, self.config.peft.mode)
            self._built[stage.index] = built
        return self._built[stage.index]

    def with_fresh_opt_state(self, state: steps.TrainState, stage: Stage) -> steps.TrainState:
        """Optimizer state is re-initialised at each stage switch (like recompiling a Keras
        model after unfreezing): moments of a frozen-stage head say nothing about the
        fine-tune stage's geometry, and a fresh state keeps every checkpoint restorable."""
        tx = self.built(stage, state.params).tx
        return state.replace(opt_state=jax.jit(tx.init, out_shardings=self.replicated)(state.params))

    def restore_or_init(self) -> tuple[steps.TrainState, dict]:
        fresh = self.initial_state()

        def target(record: dict) -> steps.TrainState:
            stage = self.stages[record["stage_index"]]
            return jax.eval_shape(lambda s: self.with_fresh_opt_state(s, stage), fresh)

        restored = self.checkpointer.restore_latest_good(self._abstract_with_shardings(target))
        if restored is None:
            totals = dict.fromkeys(("wall_seconds", "train_seconds", "compile_seconds", "images_trained"), 0.0)
            return self.with_fresh_opt_state(fresh, self.stages[0]), {"stage_index": 0, "history": [],
                                                                       "totals": totals}
        state, record = restored
        self.workdir.rewrite_log(record["history"])
        log.info("Resumed from step %d (%s).", int(state.step), self.checkpointer.directory)
        return state, record

    def _abstract_with_shardings(self, target_fn):
        def make(record):
            abstract = target_fn(record)
            return jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), abstract)
        return make

    # ----- loop -----
    def train_step_fn(self, stage: Stage, params: Any):
        if stage.index not in self._train_steps:
            self._train_steps[stage.index] = jax.jit(self.built(stage, params).train_step, donate_argnums=0)
        return self._train_steps[stage.index]

    def batches(self, epoch: int, start_step: int) -> Iterator[dict]:
        """Global train batches of `epoch` from `start_step`, with the unlabelled images of
        each step as batch['unlabeled'] when the method reads them."""
        labelled = self._labelled_batches(epoch, start_step)
        if not self.objective.unlabeled_ratio:
            return labelled
        return ({**batch, **unlabeled} for batch, unlabeled in zip(labelled, self._unlabeled_batches(epoch, start_step)))

    def _labelled_batches(self, epoch: int, start_step: int) -> Iterator[dict]:
        """Gathered on the device from the resident split, or streamed through tf.data. Same
        examples in the same order."""
        args = self._epoch_args(epoch, start_step)
        if self.config.data.device_resident:
            resident = self._resident_train()
            for rows in batch_order.epoch_rows(len(self.data.train), *args):
                yield self._gather(resident, parallel.to_global({"index": rows}, self.mesh)["index"])
        else:
            for local in batch_order.train_batches(self.data.train, *args):
                yield parallel.to_global(local, self.mesh)

    def _unlabeled_batches(self, epoch: int, start_step: int) -> Iterator[dict]:
        """The unlabelled images of the epoch's steps from `start_step` (batch_order.unlabeled_rows:
        `unlabeled_ratio` per labelled image), sharded over the mesh like the labelled batch,
        with their rows in the stream (`unlabeled_index`: where a method finds what it
        derived for an image before the run, such as a propagated label)."""
        rows = batch_order.unlabeled_rows(len(self.data.unlabeled), self.objective.unlabeled_ratio * self.config.batch_size,
                                       self.config.seed, epoch * self.steps_per_epoch + start_step,
                                       self.steps_per_epoch - start_step, jax.process_index(), jax.process_count())
        for local in rows:
            yield parallel.to_global({"unlabeled": self.data.unlabeled.images[local],
                                      "unlabeled_index": local.astype(np.int32)}, self.mesh)

    def _epoch_args(self, epoch: int, start_step: int) -> tuple:
        """This process's arguments to batch_order.epoch_rows / batch_order.train_batches."""
        return (self.config.batch_size, self.config.seed, epoch, start_step, jax.process_index(),
                jax.process_count())

    def _resident_train(self) -> dict:
        """The uint8 train split on the devices, uploaded once per process."""
        if self._resident is None:
            train_split = {"image": self.data.train.images, "label": self.data.train.labels}
            self._resident = jax.device_put(train_split, self.replicated)
        return self._resident

    _gather = staticmethod(jax.jit(steps.gather_batch))

    def evaluate(self, state: steps.TrainState, split: data_lib.ArraySplit | None) -> dict[str, float]:
        """The objective's metrics of `state` on `split`; {} for a run without that split."""
        return {} if split is None else self.objective.evaluate(self.evaluator, state, split)

    def epoch_evaluation(self, state: steps.TrainState) -> dict[str, float]:
        """History's eval metrics: `eval_<metric>` on the test split (monitoring only) and
        `val_<metric>` on the validation split (the only ones that select)."""
        return {**{f"eval_{k}": v for k, v in self.evaluate(state, self.data.eval).items()},
                **{f"val_{k}": v for k, v in self.evaluate(state, self.data.validation).items()}}

    def run(self) -> dict:
        """Train through every stage from wherever the workdir left off; returns the summary."""
        start_time = time.time()
        for stage in self.stages:
            if not stage.epochs:
                log.info("Stage %r has 0 epochs: skipped.", stage.name)
        state, record = self.restore_or_init()
        wall_before = record["totals"]["wall_seconds"]
        history: list[dict] = record["history"]
        totals: dict[str, float] = record["totals"]  # cumulative over resumed invocations
        stopped_early: list[dict] = record.get("stopped_early", [])  # absent from records before early stopping
        stopper = self._stopper(record)
        state_stage = self.stages[record["stage_index"]]
        total_epochs = self.stages[-1].end_epoch
        partial_epoch = record.pop("partial_epoch", None)  # saved by a stop mid-epoch
        self._install_signal_handlers()
        try:
            state = self._end_stage_if_over(state, stopper, stopped_early)  # the checkpoint may be a stage's end
            while (epoch := int(state.step) // self.steps_per_epoch) < total_epochs:
                stage = stage_of_epoch(self.stages, epoch)
                if stage.index != state_stage.index:
                    state, state_stage = self.with_fresh_opt_state(state, stage), stage
                if stopper is not None and stopper.stage_index != stage.index:
                    stopper = early_stopping.start(self.config, stage.index)
                record = {"stage_index": stage.index, "history": history, "totals": totals,
                          "early_stopping": None if stopper is None else early_stopping.to_json(stopper),
                          "stopped_early": stopped_early}
                state, sums, seconds, timed_images, compile_s = self.train_epoch(state, stage, epoch, record,
                                                                                 partial_epoch)
                partial_epoch = None
                totals["train_seconds"] += seconds
                totals["compile_seconds"] += compile_s
                totals["images_trained"] += timed_images
                train_metrics = steps.summarize(sums, self.objective.train_metrics)
                entry = {"epoch": epoch + 1, "stage": stage.name, "step": int(state.step),
                         **{f"train_{name}": value for name, value in train_metrics.items()},
                         **self.epoch_evaluation(state),
                         "epoch_train_seconds": seconds, "train_images_per_second": images_per_second(timed_images, seconds),
                         "lr": self.current_lr(stage, state)}
                history.append(entry)
                self.workdir.log_epoch(entry)
                if jax.process_index() == 0:
                    tqdm.write(epoch_line(entry, total_epochs, self.objective.metrics, tuple(train_metrics),
                                          self.config.data))
                totals["wall_seconds"] = wall_before + time.time() - start_time
                selection = entry.get(f"val_{self.objective.metric}")  # None: no validation split, no "best"
                metrics = None if selection is None else {METRIC: selection}
                if stopper is not None:  # early stopping needs a validation split (check_data_fits)
                    stopper = early_stopping.update(self.config, stopper, entry)
                    record["early_stopping"] = early_stopping.to_json(stopper)
                    # Early stopping decides which weights the run ends on (its newest best epoch, by
                    # its metric and min_delta), so it decides "best" too: the newest improving epoch.
                    metrics = {METRIC: float(entry["step"]) if stopper.has_improved else -1.0,
                               STAGE_BEST: stopper.has_improved}  # kept for the stage's end to restore
                self.checkpointer.save(state, record, metrics=metrics)
                state = self._end_stage_if_over(state, stopper, stopped_early)
                # A signal that arrived during a scanned epoch or the epoch's last step; after
                # the last epoch the run finishes instead (only the final evaluation is left).
                if int(state.step) < total_epochs * self.steps_per_epoch and (signum := self._agreed_stop_signal()):
                    self._stop(signum, state)
        finally:
            self._restore_signal_handlers()
            self.checkpointer.wait()
        reported, selection = self.reported_weights(state, history)
        metric = self.objective.metric
        summary = {
            "objective": self.config.objective,
            "metric": metric,  # the objective's headline: test_<metric>, val_<metric>, extra_eval_<metric>
            # Every test_/val_/extra_eval_ figure is of the reported weights: those evaluate, predict,
            # export and serve open by default, so their numbers match these.
            "selection": selection,
            **{f"test_{name}": value for name, value in self.evaluate(reported, self.data.eval).items()},
            **{f"val_{name}": value for name, value in self.evaluate(reported, self.data.validation).items()},
            "eval_split": self.config.data.eval_split or None,
            "eval_examples": len(self.data.eval) if self.data.eval is not None else 0,
            "validation_split": selection["split"],
            "validation_examples": len(self.data.validation) if self.data.validation is not None else 0,
            f"extra_eval_{metric}": {name: self.evaluate(reported, split)[metric]
                                     for name, split in self.data.extra_evals.items()},
            # Epochs trained; an early stop skips the rest of its stage (and state.step with it).
            "epochs_completed": len(history),
            "steps": len(history) * self.steps_per_epoch,
            "stopped_early": stopped_early,
            "wall_seconds": wall_before + time.time() - start_time,
            "train_seconds": totals["train_seconds"],
            "compile_seconds": totals["compile_seconds"],
            "train_images_per_second": images_per_second(totals["images_trained"], totals["train_seconds"]),
            **self.parameter_summary(state.params),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "platform": jax.devices()[0].platform,
            "compute_dtype": self.compute_dtype.name,  # config.precision, resolved
            "config": self.config.to_dict(),
        }
        summary["adapter"] = self.write_adapter()
        self.workdir.write_summary(summary)
        return summary

    def reported_weights(self, state: steps.TrainState, history: list[dict]) -> tuple[steps.TrainState, dict]:
        """The weights a finished run reports, and how they were chosen: the checkpoint with the
        best validation metric when the run holds out a validation split, else the final
        weights (a run without one selects nothing). Never chosen on the test split."""
        best_step = self.checkpointer.best_step()  # None: no checkpoint carries a validation metric
        split = data_lib.validation_split_name(self.config.data) if self.data.validation is not None else None
        if best_step is not None and best_step != int(state.step):
            state, _ = self.checkpointer.restore(best_step, state)
        step = int(state.step) if best_step is None else best_step
        epoch = next((h["epoch"] for h in history if h["step"] == step), None)
        return state, {"split": split, "metric": f"val_{self.objective.metric}" if split else None,
                       "weights": "best" if split else "final", "step": step, "epoch": epoch}

    def trained_anywhere(self, params: Any) -> set[str]:
        """Paths of the parameters some stage trains."""
        return set().union(*(self.built(stage, params).trainable for stage in self.stages))

    def parameter_summary(self, params: Any) -> dict:
        """Parameter counts for summary.json: in all, trained per stage, and the sparsity of
        the pruned kernels (None without pruning)."""
        pruned = prune.prunable_leaves(self.trained_anywhere(params), params)
        return {"parameters": optim.count_parameters(params),
                "trainable_parameters": {stage.name: optim.count_parameters(params, self.built(stage, params).trainable)
                                         for stage in self.stages},
                "sparsity": prune.sparsity_of(params, pruned) if self.config.prune.sparsity else None}

    def write_adapter(self) -> dict | None:
        """A PEFT run started from a jaxcifar workdir is also saved as an adapter (peft.py):
        the best checkpoint's changed leaves, against the base run's best checkpoint. Returns
        adapter.json's record (None for a run that trains everything or has no workdir base)."""
        if (self.config.peft.mode == "full" or not self.init_from
                or pathlib.Path(self.init_from).suffix in TORCH_SUFFIXES):
            return None
        variables, step = checkpoint.load_variables(self.workdir.path, "best")
        base = pathlib.Path(self.init_from).absolute()
        base_variables, base_step = checkpoint.load_variables(base, "best")
        bn_trained = not all(self.built(stage, variables["params"]).frozen_backbone for stage in self.stages)
        leaves = peft.adapter_leaves(variables, self.trained_anywhere(variables["params"]), bn_trained)
        rebuilt = peft.apply_adapter(variables, base_variables, leaves, str(base))
        if not self.workdir.is_writer:
            return None
        out = peft.write_adapter(self.workdir.path, variables, step, base, base_step, leaves, rebuilt)
        record = peft.read_adapter(out)[0]
        log.info("Adapter: %s (%s of %s bytes) against %s.", out, f"{record['adapter_bytes']:,}",
                 f"{record['model_bytes']:,}", base)
        return {"path": str(out), **record}

    def train_epoch(self, state: steps.TrainState, stage: Stage, epoch: int, record: dict,
                    partial_epoch: dict | None = None):
        """One epoch (or its remainder after a resume, continuing the metric sums and seconds
        of its first part from `partial_epoch`, so a resumed epoch's metrics cover all of it).
        Metrics stay on the device and are pulled to the host only every `log_every_steps`
        steps, for the progress bar. A stop signal saves a mid-epoch checkpoint, except in
        the epoch's last step, where `run` stops once the epoch is evaluated and saved."""
        start_step = int(state.step) - epoch * self.steps_per_epoch
        if self.config.data.scan_epoch:
            return self._train_epoch_scanned(state, stage, epoch, start_step)
        train_step = self.train_step_fn(stage, state.params)
        sums = None if partial_epoch is None else steps.sums_from_host(partial_epoch["sums"])
        seconds_before = 0.0 if partial_epoch is None else partial_epoch["seconds"]
        # Images of the steps inside the timed seconds: a step that compiled is left out of both.
        timed_images = 0.0 if partial_epoch is None else partial_epoch.get("timed_images", partial_epoch["sums"]["count"])
        window, compile_s = None, 0.0
        bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1} [{stage.name}]",
                   disable=jax.process_index() != 0, leave=False, dynamic_ncols=True)
        t0 = t_window = time.time()
        try:  # the bar is closed before anything else prints, a stop message included
            for i, batch in enumerate(self.batches(epoch, start_step)):
                state, metrics = train_step(state, batch)
                if stage.index not in self._warm:
                    jax.block_until_ready(metrics)  # the first call compiles: keep it out of images/s
                    compile_s = time.time() - t0
                    t0 = t_window = time.time()
                    self._warm.add(stage.index)
                else:
                    timed_images += self.config.batch_size
                sums = steps.accumulate(sums, metrics)
                window = steps.accumulate(window, metrics)
                if (i + 1) % self.config.log_every_steps == 0:
                    window_metrics = steps.summarize(window, self.objective.train_metrics)  # the only host sync
                    self._check_finite(window_metrics)
                    now = time.time()
                    bar.set_postfix({name: f"{value:.3f}" for name, value in window_metrics.items()},
                                    img_s=f"{float(window['count']) / (now - t_window):.0f}")
                    bar.update(self.config.log_every_steps)
                    window, t_window = None, now
                more_steps_in_epoch = start_step + i + 1 < self.steps_per_epoch
                if more_steps_in_epoch and self._stop_check_due(i + 1) and (signum := self._agreed_stop_signal()):
                    partial = {"sums": steps.sums_to_host(sums), "seconds": seconds_before + time.time() - t0,
                               "timed_images": timed_images}
                    self._save_and_stop(signum, state, dict(record, partial_epoch=partial))
            jax.block_until_ready(sums)
            seconds = seconds_before + time.time() - t0
        finally:
            bar.close()
        self._check_finite(steps.summarize(sums, self.objective.train_metrics))
        return state, sums, seconds, timed_images, compile_s

    def _train_epoch_scanned(self, state: steps.TrainState, stage: Stage, epoch: int, start_step: int):
        """`train_epoch` as one compiled `lax.scan` over the epoch's remaining steps. Same
        batches, same step function; compiled ahead of time once per (stage, steps) so the
        compile is kept out of the training seconds. Outputs are pinned replicated, as the
        compiled call requires of its inputs next epoch. A stop signal is acted on by `run`
        once the epoch is logged and saved."""
        local_rows = batch_order.epoch_rows(len(self.data.train), *self._epoch_args(epoch, start_step))
        rows = parallel.steps_to_global(local_rows, self.mesh)
        resident, key, compile_s = self._resident_train(), (stage.index, len(local_rows)), 0.0
        if key not in self._epoch_scans:
            t0 = time.time()
            scan = jax.jit(steps.make_epoch_scan(self.built(stage, state.params).train_step), donate_argnums=0,
                           out_shardings=self.replicated)
            self._epoch_scans[key] = scan.lower(state, resident, rows).compile()
            compile_s = time.time() - t0
        t0 = time.time()
        state, sums = self._epoch_scans[key](state, resident, rows)
        jax.block_until_ready(sums)
        seconds = time.time() - t0
        self._check_finite(steps.summarize(sums, self.objective.train_metrics))
        return state, sums, seconds, float(sums["count"]), compile_s

    def current_lr(self, stage: Stage, state: steps.TrainState) -> float:
        schedule = optim.make_schedule(stage.config, self.steps_per_epoch)
        return float(schedule(int(state.step) - stage.first_epoch * self.steps_per_epoch))

    # ----- early stopping -----
    def _stopper(self, record: dict) -> early_stopping.StageStopper | None:
        """Early stopping's count for the checkpoint's stage, as saved with it (None when off)."""
        if not early_stopping.is_enabled(self.config):
            return None
        saved = record.get("early_stopping")
        if saved is None:
            return early_stopping.start(self.config, record["stage_index"])
        return early_stopping.from_json(self.config, saved)

    def _end_stage_if_over(self, state: steps.TrainState, stopper: early_stopping.StageStopper | None,
                           stopped_early: list[dict]) -> steps.TrainState:
        """Once the stopper's stage is over (its patience ran out, or its epochs did): the
        weights of its best epoch, restored from that epoch's checkpoint, at the next stage's
        first step, so that stage keeps its planned schedule and data order. An early stop is
        appended to `stopped_early`. Follows from the checkpoint's record alone, so a run
        resumed from the checkpoint saved just before does the same."""
        if stopper is None:
            return state
        stage = self.stages[stopper.stage_index]
        end_step = stage.end_epoch * self.steps_per_epoch
        if not stopper.should_stop and int(state.step) < end_step:
            return state
        if stopper.should_stop:
            stopped_early.append(early_stopping.report(self.config, stopper, stage.name,
                                                       int(state.step) // self.steps_per_epoch))
            log.info("Stage %r stopped early after epoch %d: %s did not improve for %d epochs. Going on from its "
                     "best epoch, %d.", stage.name, stopped_early[-1]["epoch"], self.config.early_stopping.metric,
                     self.config.early_stopping.patience, stopper.best_epoch)
        if stopper.best_step not in (None, int(state.step)):  # None: the stage trained no epoch
            state, _ = self.checkpointer.restore(stopper.best_step, state)
        return state.replace(step=jax.device_put(np.int32(end_step), self.replicated))

    # ----- failure handling -----
    def _check_finite(self, metrics: dict) -> None:
        """Stop before a non-finite state can be checkpointed; the last good checkpoint stays."""
        if "first_bad_step" in metrics:
            saved = self.checkpointer.steps()
            raise NonFiniteLoss(
                f"The training loss became NaN/inf at step {metrics['first_bad_step']}. Training stopped; the last "
                f"good checkpoint (step {saved[-1] if saved else 'none: nothing was saved'}) is kept. "
                "Lower the learning rate, add warmup, or check the data.")

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._stop_signal = signum
        self._previous_handlers = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _restore_signal_handlers(self) -> None:
        for s, h in getattr(self, "_previous_handlers", {}).items():
            signal.signal(s, h)

    def _stop_check_due(self, steps_done: int) -> bool:
        """Whether to act on a stop signal after this step. A lone process acts at once; several
        must agree first, or one would enter Orbax's collective save while the others enter
        the next step's all-reduce, and all would hang. Agreeing syncs the host with the
        devices, so they agree where the loop syncs anyway, every `log_every_steps` steps."""
        return jax.process_count() == 1 or steps_done % self.config.log_every_steps == 0

    def _agreed_stop_signal(self) -> int | None:
        """The stop signal that reached any process (the highest number if several), or None.
        Every process must ask at the same point of the loop.

        Why not JAX's preemption service (`multihost_utils.reached_preemption_sync_point`):
        it does work with a plain SIGTERM on CPU with gloo in jax 0.10.2 (both processes met
        at the same step), but its C++ SIGTERM notifier is silenced by any Python SIGTERM
        handler, it never hears SIGINT, it cannot tell the other processes which signal came,
        and it wants a call at every step with consecutive numbers, which a scanned epoch
        does not make. One all-gathered scalar at a point where the loop syncs covers both
        signals and both epoch paths, and a single process skips it."""
        return parallel.max_over_processes(self._stop_signal or 0) or None

    def _save_and_stop(self, signum: int, state: steps.TrainState, record: dict) -> None:
        """Mid-epoch checkpoint (no eval metrics, so it never counts as 'best'), then stop."""
        self.checkpointer.save(state, record)
        self._stop(signum, state)

    def _stop(self, signum: int, state: steps.TrainState) -> None:
        self.checkpointer.wait()
        raise StopRequested(signum, int(state.step), self.workdir.path)


def epoch_line(entry: dict, total_epochs: int, eval_metrics: tuple[str, ...] = ("loss", "accuracy"),
               train_metrics: tuple[str, ...] = ("loss", "accuracy"),
               data_config: ml_collections.ConfigDict | None = None) -> str:
    """The line printed after each epoch, as Keras prints one. `eval_metrics` and
    `train_metrics`: the method's, in order (accuracies as percentages); the eval metrics are
    shown for each split evaluated, named as the run names them (`test` is shown for
    monitoring; only `val` selects)."""
    shown = {"loss": "loss", "accuracy": "acc"}
    names = {"eval": data_config.eval_split if data_config else "eval",
             "val": data_lib.validation_split_name(data_config) if data_config else "val"}

    def values(prefix: str, metrics: tuple[str, ...]) -> str:
        return " ".join(f"{shown.get(name, name)} " + (f"{entry[prefix + name]:.2%}" if "accuracy" in name
                                                       else f"{entry[prefix + name]:.4f}") for name in metrics)

    evals = "  |  ".join(f"{names[prefix]} {values(prefix + '_', eval_metrics)}" for prefix in ("val", "eval")
                         if f"{prefix}_{eval_metrics[0]}" in entry)
    speed = entry["train_images_per_second"]
    timing = (f"{entry['epoch_train_seconds']:.1f} s, {speed:,.0f} img/s" if speed is not None
              else "speed not measured: every step of this epoch included compilation")
    return (f"epoch {entry['epoch']}/{total_epochs} [{entry['stage']}]  "
            f"train {values('train_', train_metrics)}  |  {evals}  |  {timing}")


def images_per_second(images: float, seconds: float) -> float | None:
    """Training speed, or None when nothing was timed (a one-step epoch is all compilation)."""
    return images / seconds if images and seconds > 0 else None


def finished_line(summary: dict, workdir: str | pathlib.Path) -> str:
    """What the command line prints when a run is done: its result, length, speed and where it is."""
    speed = summary["train_images_per_second"]
    timing = (f"train images/s={speed:.0f}" if speed is not None
              else "train speed not measured: every step included compilation")
    return (f"{result_line(summary)}; epochs={summary['epochs_completed']}; {timing}; "
            f"results in {pathlib.Path(workdir).absolute()}/summary.json")


def result_line(summary: dict) -> str:
    """What a finished run reports: the test (else validation) metric of its reported weights,
    and which weights those are."""
    prefix, split, count = (("test", summary["eval_split"], summary["eval_examples"]) if summary["eval_split"]
                            else ("val", summary["validation_split"], summary["validation_examples"]))
    selection = summary["selection"]
    chosen = (f"best on {selection['split']} (step {selection['step']})" if selection["weights"] == "best"
              else f"final (step {selection['step']})")
    return f"{prefix}_{summary['metric']}={summary[prefix + '_' + summary['metric']]:.4f} on {count} {split} images, weights {chosen}"


def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None = None,
        data: data_lib.Data | None = None, init_from: str | None = None, overwrite: bool = False) -> dict:
    """Library entry point: train (or resume) `config` in `workdir`; returns summary.json's content."""
    data = data or data_lib.load_data(config, data_dir)
    config = prune.with_block_widths(config, init_from)
    trainer = Trainer(config, workdir, data, init_from=init_from, overwrite=overwrite)
    try:
        return trainer.run()
    finally:
        trainer.checkpointer.close()


def configure_compilation_cache() -> None:
    """Persist compiled steps across runs (a resumed or repeated run skips recompiling):
    $JAXCIFAR_COMPILATION_CACHE, default ~/.cache/jaxcifar/xla; set it to '' to disable."""
    cache_dir = os.environ.get("JAXCIFAR_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache/jaxcifar/xla"))
    if cache_dir and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", cache_dir)


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/train.py
    from jaxcifar.cli.train import main

    sys.exit(main())
