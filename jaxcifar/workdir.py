"""A run directory: its config, its class names (classes.json), per-epoch logs (metrics.jsonl
+ TensorBoard events) and summary.json. Only process 0 writes logs; every process sees the
same directory.

classes.json records the class names in logit order, so that evaluate, predict and export
name the classes without reading the data (which an image folder's run may no longer have).

A workdir belongs to one run. Reusing it with a config that would change the run's
result is refused (resume would silently mix two runs); `--overwrite` moves the old
run aside to `WORKDIR.replaced-TIMESTAMP` - nothing is ever deleted. A workdir whose run
never saved a checkpoint holds nothing to protect: a corrected command simply takes it over.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections

from jaxcifar import config as config_lib
from jaxcifar import methods

log = logging.getLogger("jaxcifar")

# Fields that may change between the runs sharing a workdir: they leave the checkpoints' layout
# alone (a bfloat16 run resumes as float32 and back; tta and precision change the numbers).
RESUMABLE_CHANGES = ("log_every_steps", "keep_checkpoints", "eval_batch_size", "tta", "precision", "tensorboard")
CLASSES_FILE = "classes.json"
# config.json's one key beyond the config: the module defining the run's method
# (methods.module_of), so that a fresh process can open a run of a method defined outside
# the package. Written with the config, never compared: it names code, not a setting.
METHOD_MODULE = "method_module"


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (tuples become lists), for storage and comparison."""
    return json.loads(json.dumps(config.to_dict()))


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a
    truncated one: the other processes of a run read config.json while process 0 rewrites it."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def incompatible_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of fields that differ between two stored configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += incompatible_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def with_defaults(stored: dict, defaults: dict) -> dict:
    """`stored` with the fields it lacks taken from `defaults`: a run written before a field
    existed behaved as that field's default does, so it stays resumable. Dicts keyed by the
    user (`param_groups`, ...) replace their default whole, so they are not filled in."""
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif key not in config_lib.OPEN_DICTS and isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def read_class_names(workdir: str | pathlib.Path) -> tuple[str, ...]:
    """The class names a run was trained with, in logit order."""
    path = pathlib.Path(workdir) / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run in {workdir} was trained before jaxcifar recorded its "
                                "classes. Run its training command once more: it resumes, finds the run complete, "
                                f"and writes {CLASSES_FILE}.")
    return tuple(json.loads(path.read_text())["class_names"])


def has_trained(path: pathlib.Path) -> bool:
    """Whether the run in `path` saved a checkpoint. One that did not (it was refused, or
    stopped before its first save) has nothing to protect, so its corrected command may
    reuse the workdir without --overwrite."""
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


class Workdir:
    def __init__(self, path: str | pathlib.Path, config: ml_collections.ConfigDict, overwrite: bool = False,
                 class_names: tuple[str, ...] | None = None):
        """`class_names` (the data's, in label order) are recorded in classes.json; a workdir
        whose run had other classes is refused like one with another config."""
        self.path = pathlib.Path(path).absolute()
        self.is_writer = jax.process_index() == 0
        new = config_json(config)
        config_file = self.path / "config.json"
        classes_file = self.path / CLASSES_FILE
        if config_file.exists():
            stored = json.loads(config_file.read_text())
            stored.pop(METHOD_MODULE, None)
            stored = with_defaults(stored, config_json(config_lib.default_config()))
            diff = incompatible_fields(stored, new)
            recorded = read_class_names(self.path) if classes_file.exists() else None
            if class_names is not None and recorded is not None and recorded != tuple(class_names):
                diff.append(f"class names: {list(recorded)} -> {list(class_names)}")
            if diff and not has_trained(self.path):
                log.info("Workdir %s held a run that never saved a step; starting it with this config.", self.path)
                diff = []
            if diff and not overwrite:
                raise FileExistsError(
                    f"Workdir {self.path} holds a run with a different config ({'; '.join(diff)}). "
                    "Use another --workdir, or pass --overwrite to move that run aside and start over.")
            if diff and self.is_writer:
                aside = self.path.with_name(f"{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
                self.path.rename(aside)
                log.warning("Moved the previous run in %s to %s.", self.path, aside)
        if self.is_writer:
            self.path.mkdir(parents=True, exist_ok=True)
            record = {**new, METHOD_MODULE: methods.module_of(config.objective)}
            write_atomically(config_file, json.dumps(record, indent=2))
            if class_names is not None:
                write_atomically(classes_file, json.dumps({"class_names": list(class_names)}, indent=2))
        self._tb = None if config.tensorboard else False

    def rewrite_log(self, history: list[dict]) -> None:
        """On resume: metrics.jsonl = the checkpoint's history, dropping epochs logged after
        the checkpoint that the run is resuming from (they will be trained again)."""
        if self.is_writer:
            write_atomically(self.path / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    def log_epoch(self, entry: dict[str, Any]) -> None:
        if not self.is_writer:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            import tensorflow as tf

            with writer.as_default(step=entry["step"]):
                for key, value in entry.items():
                    if isinstance(value, (int, float)) and key not in ("step",):
                        tf.summary.scalar(key, value)
            writer.flush()

    def _tensorboard(self):
        """TensorBoard event writer in WORKDIR/tensorboard (skipped where TensorFlow is absent,
        or `config.tensorboard` is off)."""
        if self._tb is None:
            try:
                from jaxcifar.tf_extra import TF_INSTALL, import_tf

                self._tb = import_tf("TensorBoard events").summary.create_file_writer(str(self.path / "tensorboard"))
            except ImportError:
                log.warning("TensorFlow is not installed: no TensorBoard events (metrics.jsonl is still written; "
                            "%s adds them).", TF_INSTALL)
                self._tb = False
        return self._tb or None

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.is_writer:
            write_atomically(self.path / "summary.json", json.dumps(summary, indent=2))

    def history(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
