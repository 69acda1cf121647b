"""Methods: what a run learns (`config.objective`), one file each, behind one protocol.

    classification.py  supervised cross-entropy on labelled images
    two_view.py        the base of two-view self-supervision (views, kNN monitor)
    simclr.py          SimCLR's contrastive loss on it
    vicreg.py          VICReg's non-contrastive loss on it
    multicrop.py       many small crops per image, EMP-SSL's loss (settings in `config.method`)
    self_training.py   a student on the budget's labels and every unlabelled image's propagated label
    *_fields.py        a method's settings, declared without JAX (multicrop_fields.py, ...)
    base.py            the protocol (`Method`), `StageContext` and the `Evaluator`

A method declares everything the loop (train.py) and the step (steps.py) need from it, so
neither names a method or a metric it does not own:
  - its extra training state (`init_state`; a momentum teacher, a centre, a queue), kept in
    `TrainState.method_state`, updated by its loss and `after_update`, and checkpointed and
    restored with the rest of the state;
  - the data streams it reads: labelled batches always, and `unlabeled_ratio` unlabelled
    images per labelled one (`batch['unlabeled']`, images only, and `batch['unlabeled_index']`,
    their rows in the unlabelled stream);
  - its own settings (`SETTINGS`, schema.Field declarations in its `*_fields.py` file,
    which imports no JAX, named by its registry entry), which a run keeps in `config.method`;
  - its loss and train metrics: the loss returns metric sums holding at least `loss_sum`
    and `count` (which the loop owns: the NaN check and images/s) plus any sums of its own,
    and `train_metrics` turns them into the averages logged as `train_<name>`;
  - the evaluators that measure it each epoch (`jaxcifar/evaluators/`: classification, kNN,
    ...) and its model-selection metric, declared here in its `MethodInfo`; its eval metrics
    (with whether each is maximised) are theirs, and config's choices, early stopping's
    watchable metrics and --help are derived from them.

Why a package and not one objectives.py: each method is read, tested and added on its own,
as in solo-learn, and a new one is one file plus a recipe. Why this registry holds light
entries: config.py validates `objective` and documents it for --help without importing
JAX or Flax, so an entry names its class as 'module:attribute' and `create` imports it on
first use. A method defined outside the package (a recipe's own file, a test) is added
with `register`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from jaxcifar import evaluators as evaluators_lib


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A registry entry: what config and --help need to know of a method without building it."""

    name: str  # the value of config.objective
    doc: str  # one line for --help
    factory: str  # 'module:attribute' of a callable (config, num_classes) -> base.Method
    evaluators: tuple[str, ...]  # the evaluators (jaxcifar/evaluators/) that measure it each epoch
    selection: str  # the eval metric that picks the best checkpoint and heads summary.json
    # Whether the trained network ends in class logits, so that predict, export and serve can
    # run it; False for a backbone trained for a later run (self-supervised pretraining).
    classifier: bool = True
    # 'module:attribute' of the method's own settings (a tuple of schema.Field, declared in a
    # module that imports no JAX, so a config is validated without it), which a run keeps in
    # `config.method`; '' = none.
    settings: str = ""

    @property
    def eval_metrics(self) -> dict[str, bool]:
        """Eval metric -> True if higher is better, in display order: its evaluators' metrics."""
        return {metric: higher for name in self.evaluators
                for metric, higher in evaluators_lib.info(name).metrics.items()}

    def check(self) -> None:
        """Refuse an entry that could not select a checkpoint by its own metrics (checked when
        registered, once the evaluators it names are)."""
        if self.selection not in self.eval_metrics or not self.eval_metrics[self.selection]:
            raise ValueError(f"Method {self.name!r}: its selection metric {self.selection!r} must be one of its eval "
                             f"metrics {list(self.eval_metrics)}, and higher must be better.")


_REGISTRY: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> None:
    """Add a method; config accepts its name as `objective` from now on."""
    info.check()
    if info.name in _REGISTRY and _REGISTRY[info.name] != info:
        raise ValueError(f"A different method named {info.name!r} is already registered.")
    _REGISTRY[info.name] = info


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def info(name: str) -> MethodInfo:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown objective {name!r}; registered methods: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def settings(name: str) -> tuple:
    """The settings method `name` declares (schema.Field, in order): read from their module
    on first use, like `create`, so the registry stays light."""
    entry = info(name)
    if not entry.settings:
        return ()
    module, attribute = entry.settings.split(":")
    return tuple(getattr(importlib.import_module(module), attribute))


def module_of(name: str) -> str:
    """The module that defines method `name`: what a run records, so that a fresh process
    can import it (and so register a method defined outside the package) before opening it."""
    return info(name).factory.split(":")[0]


def import_recorded(name: str | None, module: str) -> None:
    """Make method `name` known by importing `module`, the one its run recorded, unless it
    is registered already. A method defined outside the package registers itself when its
    module is imported (`register` at the module's top level)."""
    if name in _REGISTRY or not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"This run's objective {name!r} is defined in the module {module!r}, which cannot be "
                         f"imported here ({e}): put its folder on PYTHONPATH, or import it before opening the run.") from None
    if name not in _REGISTRY:
        raise ValueError(f"Importing {module!r} did not register the objective {name!r}: call "
                         "jaxcifar.methods.register(...) at that module's top level.")


def create(config: Any, num_classes: int) -> Any:
    """The method `config.objective` names (a base.Method), built for `num_classes` classes."""
    module, attribute = info(config.objective).factory.split(":")
    return getattr(importlib.import_module(module), attribute)(config, num_classes)


register(MethodInfo("classification", "supervised: cross-entropy on the labels", "jaxcifar.methods.classification:Classification",
                    ("classification",), "accuracy"))
register(MethodInfo("simclr", "self-supervised pretraining without labels, contrastive (SimCLR)",
                    "jaxcifar.methods.simclr:SimCLR", ("knn",), "knn_accuracy", classifier=False))
register(MethodInfo("vicreg", "self-supervised pretraining without labels, non-contrastive (VICReg)",
                    "jaxcifar.methods.vicreg:VICReg", ("knn",), "knn_accuracy", classifier=False))
register(MethodInfo("multicrop", "self-supervised pretraining without labels, many small crops per image (EMP-SSL)",
                    "jaxcifar.methods.multicrop:MultiCrop", ("knn",), "knn_accuracy", classifier=False,
                    settings="jaxcifar.methods.multicrop_fields:SETTINGS"))
register(MethodInfo("self_training", "semi-supervised: a student on the labels and every unlabelled image's "
                    "propagated label (python -m jaxcifar.propagate), strongly augmented",
                    "jaxcifar.methods.self_training:SelfTraining", ("classification",), "accuracy",
                    settings="jaxcifar.methods.self_training_fields:SETTINGS"))
