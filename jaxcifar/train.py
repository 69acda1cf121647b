"""The training loop: `fit(config, workdir)` (its command line, `python -m jaxcifar.train`, is
jaxcifar/cli/train.py).

Side effects live here (data loading, logging, checkpoints, signals); the math is in
steps.py, optim.py and augment.py. Running the same command on the same workdir resumes
from the latest good checkpoint.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections
from tqdm.auto import tqdm

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import batch_order, early_stopping, methods, optim, parallel, precision, prune, run_summary, steps
from jaxcifar.checkpoint import METRIC, STAGE_BEST, Checkpointer
from jaxcifar.methods.base import Evaluator
from jaxcifar.progress import EpochBar, epoch_line, images_per_second
from jaxcifar.stages import BuiltStage, Stage, build_stage, initial_state, plan_stages, stage_of_epoch
from jaxcifar.stop_signals import StopRequested, StopSignals
from jaxcifar.workdir import Workdir

log = logging.getLogger("jaxcifar")


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
        self.objective = methods.create(config, data.num_classes)
        # Refused before the workdir is touched, so a refused start leaves nothing behind.
        self.stream = batch_order.TrainStream(config, data, self.mesh, self.objective.unlabeled_ratio)
        early_stopping.require_validation(config, data.validation is not None)
        self.workdir = Workdir(workdir, config, overwrite=overwrite, class_names=data.class_names)
        self.data = data
        self.model = self.objective.model
        self.compute_dtype, reason = precision.compute_dtype(config.precision)
        log.info("The network computes in %s (%s); its parameters and optimizer state are float32.",
                 self.compute_dtype.name, reason)
        self.stages = plan_stages(config)
        if config.data.scan_epoch and jax.default_backend() == "cpu":
            log.warning("data.scan_epoch=True on a CPU: measured 25x slower than per-step dispatch for simple_cnn "
                        "(docs/design.md, 'An epoch can run as one lax.scan'). It is meant for accelerators.")
        self.steps_per_epoch = self.stream.steps_per_epoch
        self.checkpointer = Checkpointer(self.workdir.path, keep=config.keep_checkpoints)
        self.init_from = init_from
        self.replicated = parallel.replicated(self.mesh)
        self.evaluator = Evaluator(self.mesh, config.eval_batch_size, data.train)
        self._built: dict[int, BuiltStage] = {}  # stage index -> its optimizer and step
        self._train_steps: dict[int, Any] = {}  # stage index -> jitted train step
        self._epoch_scans: dict[tuple[int, int], Any] = {}  # (stage index, steps) -> compiled epoch scan
        self._warm: set[int] = set()  # stages whose step has compiled in this process
        self.signals = StopSignals(config.log_every_steps)

    # ----- state -----
    def initial_state(self) -> steps.TrainState:
        return initial_state(self.config, self.objective, self.data.train.images, self.replicated, self.init_from)

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

    def checkpoint_target(self, record: dict, like: steps.TrainState) -> steps.TrainState:
        """The abstract state (shapes, dtypes, shardings) that a checkpoint with `record`
        restores into: `like`'s, with the optimizer state of the checkpoint's own stage (a
        frozen stage keeps no moments for its frozen groups)."""
        stage = self.stages[record["stage_index"]]
        abstract = jax.eval_shape(lambda s: self.with_fresh_opt_state(s, stage), like)
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
                                      abstract)

    def restore_or_init(self) -> tuple[steps.TrainState, dict]:
        fresh = self.initial_state()
        restored = self.checkpointer.restore_latest_good(lambda record: self.checkpoint_target(record, fresh))
        if restored is None:
            totals = dict.fromkeys(("wall_seconds", "train_seconds", "compile_seconds", "images_trained"), 0.0)
            return self.with_fresh_opt_state(fresh, self.stages[0]), {"stage_index": 0, "history": [],
                                                                       "totals": totals}
        state, record = restored
        self.workdir.rewrite_log(record["history"])
        log.info("Resumed from step %d (%s).", int(state.step), self.checkpointer.directory)
        return state, record

    # ----- loop -----
    def train_step_fn(self, stage: Stage, params: Any):
        if stage.index not in self._train_steps:
            self._train_steps[stage.index] = jax.jit(self.built(stage, params).train_step, donate_argnums=0)
        return self._train_steps[stage.index]

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
        stopper = early_stopping.from_record(self.config, record)
        state_stage = self.stages[record["stage_index"]]
        total_epochs = self.stages[-1].end_epoch
        partial_epoch = record.pop("partial_epoch", None)  # saved by a stop mid-epoch
        self.signals.install()
        try:
            state = self.end_stage_if_over(state, stopper, stopped_early)  # the checkpoint may be a stage's end
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
                if stopper is not None:  # early stopping needs a validation split (require_validation)
                    stopper = early_stopping.update(self.config, stopper, entry)
                    record["early_stopping"] = early_stopping.to_json(stopper)
                    # Early stopping decides which weights the run ends on (its newest best epoch, by
                    # its metric and min_delta), so it decides "best" too: the newest improving epoch.
                    metrics = {METRIC: float(entry["step"]) if stopper.has_improved else -1.0,
                               STAGE_BEST: stopper.has_improved}  # kept for the stage's end to restore
                self.checkpointer.save(state, record, metrics=metrics)
                state = self.end_stage_if_over(state, stopper, stopped_early)
                # A signal that arrived during a scanned epoch or the epoch's last step; after
                # the last epoch the run finishes instead (only the final evaluation is left).
                if int(state.step) < total_epochs * self.steps_per_epoch and (signum := self.signals.agreed()):
                    self._stop(signum, state)
        finally:
            self.signals.restore()
            self.checkpointer.wait()
        summary = run_summary.summarize(self, state, history, totals, stopped_early,
                                        wall_before + time.time() - start_time)
        self.workdir.write_summary(summary)
        return summary

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
        compile_s = 0.0
        bar = EpochBar(self.steps_per_epoch, start_step, f"epoch {epoch + 1} [{stage.name}]",
                       self.config.log_every_steps, self.objective.train_metrics, self._check_finite)
        t0 = time.time()
        with bar:  # closed before anything else prints, a stop message included
            for i, batch in enumerate(self.stream.batches(epoch, start_step)):
                state, metrics = train_step(state, batch)
                if stage.index not in self._warm:
                    jax.block_until_ready(metrics)  # the first call compiles: keep it out of images/s
                    compile_s = time.time() - t0
                    t0 = bar.window_start = time.time()
                    self._warm.add(stage.index)
                else:
                    timed_images += self.config.batch_size
                sums = steps.accumulate(sums, metrics)
                bar.after_step(i, metrics)
                more_steps_in_epoch = start_step + i + 1 < self.steps_per_epoch
                if more_steps_in_epoch and self.signals.check_due(i + 1) and (signum := self.signals.agreed()):
                    partial = {"sums": steps.sums_to_host(sums), "seconds": seconds_before + time.time() - t0,
                               "timed_images": timed_images}
                    self._save_and_stop(signum, state, dict(record, partial_epoch=partial))
            jax.block_until_ready(sums)
            seconds = seconds_before + time.time() - t0
        self._check_finite(steps.summarize(sums, self.objective.train_metrics))
        return state, sums, seconds, timed_images, compile_s

    def _train_epoch_scanned(self, state: steps.TrainState, stage: Stage, epoch: int, start_step: int):
        """`train_epoch` as one compiled `lax.scan` over the epoch's remaining steps. Same
        batches, same step function; compiled ahead of time once per (stage, steps) so the
        compile is kept out of the training seconds. Outputs are pinned replicated, as the
        compiled call requires of its inputs next epoch. A stop signal is acted on by `run`
        once the epoch is logged and saved."""
        local_rows = self.stream.epoch_rows(epoch, start_step)
        rows = parallel.steps_to_global(local_rows, self.mesh)
        resident, key, compile_s = self.stream.resident(), (stage.index, len(local_rows)), 0.0
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

    def end_stage_if_over(self, state: steps.TrainState, stopper: early_stopping.StageStopper | None,
                          stopped_early: list[dict]) -> steps.TrainState:
        """early_stopping.end_stage_if_over, with this run's stages and checkpoints."""
        return early_stopping.end_stage_if_over(self.config, stopper, self.stages, self.steps_per_epoch, state,
                                                stopped_early, self.checkpointer.restore, self.replicated)

    # ----- failure handling -----
    def _check_finite(self, metrics: dict) -> None:
        """Stop before a non-finite state can be checkpointed; the last good checkpoint stays."""
        if "first_bad_step" in metrics:
            saved = self.checkpointer.steps()
            raise NonFiniteLoss(
                f"The training loss became NaN/inf at step {metrics['first_bad_step']}. Training stopped; the last "
                f"good checkpoint (step {saved[-1] if saved else 'none: nothing was saved'}) is kept. "
                "Lower the learning rate, add warmup, or check the data.")

    def _save_and_stop(self, signum: int, state: steps.TrainState, record: dict) -> None:
        """Mid-epoch checkpoint (no eval metrics, so it never counts as 'best'), then stop."""
        self.checkpointer.save(state, record)
        self._stop(signum, state)

    def _stop(self, signum: int, state: steps.TrainState) -> None:
        self.checkpointer.wait()
        raise StopRequested(signum, int(state.step), self.workdir.path)


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


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/train.py
    from jaxcifar.cli.train import main

    sys.exit(main())
