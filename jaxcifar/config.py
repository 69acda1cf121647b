"""Recipes, command-line overrides and validation of run configurations.

A config is an `ml_collections.ConfigDict` built by `get_config()` in a Python file,
as in big_vision and the Flax examples: recipes are code, so they can hold comments
that say what result to expect and how to get it. ConfigDict is type-safe on
assignment, which turns `--config.epochs=three` into a clear error for free.

Stages: a run is a sequence of named stages (e.g. `frozen` then `finetune`), a tuple of
dicts each with a `name`. The top-level optimisation fields (`epochs`, `lr`, ...) are the
defaults; each stage overrides any of them (`--config.stages.finetune.lr=1e-4`). A recipe
without `stages` runs one stage named `train` made of the defaults, so
`--config.epochs=3` means what it says.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pathlib
from typing import Any

import ml_collections

from jaxcifar import methods, peft, precision, schema

RECIPE_DIR = pathlib.Path(__file__).parent / "configs"

# Fields a stage may override; everything else is run-wide.
STAGE_FIELDS = (
    "epochs", "optimizer", "lr", "momentum", "nesterov", "b1", "b2", "weight_decay",
    "schedule", "warmup_epochs", "lr_start_factor", "lr_end_factor", "lr_multipliers", "group_epochs",
    "weight_decay_on", "weight_decay_multipliers", "group_optimizers", "muon_momentum", "muon_ns_steps",
)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.py") if not p.stem.startswith("_"))


def default_config() -> ml_collections.ConfigDict:
    """Every field a recipe can set, with the values a recipe inherits. What each field
    means is in `field_docs()` (shown by --help), its allowed values in `choices()`."""
    c = ml_collections.ConfigDict()
    c.objective = "classification"
    # The objective's own settings, declared in its file (methods.settings); filled by `recipe`.
    c.method = ml_collections.ConfigDict()
    c.model = "simple_cnn"
    c.model_kwargs = ml_collections.ConfigDict()
    c.seed = 0
    c.precision = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"
    c.data.image_folder = ""
    c.data.image_size = 32
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.extra_eval_splits = ()
    c.data.classes = ()
    c.data.examples_per_class = 0
    c.data.label_seed = None
    c.data.labels_csv = ""
    c.data.validation_fraction = 0.0
    c.data.device_resident = False
    c.data.scan_epoch = False

    c.augment = ml_collections.ConfigDict()
    c.augment.crop_padding = 4
    c.augment.pad_mode = "constant"
    c.augment.flip = True
    c.augment.alternating_flip = False
    c.augment.rotation = 0.0
    c.augment.zoom = 0.0
    c.augment.normalization = "cifar10"

    c.batch_size = 256
    c.eval_batch_size = 500
    c.label_smoothing = 0.0

    # Stage defaults (STAGE_FIELDS): each stage of a staged run may override them.
    c.epochs = 10
    c.optimizer = "sgd"
    c.lr = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.b1 = 0.9
    c.b2 = 0.999
    c.weight_decay = 5e-4
    c.weight_decay_on = "kernels"
    c.weight_decay_multipliers = ml_collections.ConfigDict()
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    c.lr_start_factor = 0.0
    c.lr_end_factor = 0.0
    c.lr_multipliers = ml_collections.ConfigDict({"all": 1.0})
    c.group_epochs = ml_collections.ConfigDict()
    c.group_optimizers = ml_collections.ConfigDict()
    c.muon_momentum = 0.95
    c.muon_ns_steps = 5

    c.param_groups = ordered({"all": ".*"})
    c.stages = ()

    c.ema_decay = 0.0
    c.lookahead_every = 0
    c.lookahead_decay = 0.95**5
    c.tta = False
    c.tta_translate = False
    c.keep_checkpoints = 2
    c.log_every_steps = 25

    # Self-supervised objectives (objective=simclr|vicreg); classification ignores this block.
    c.ssl = ml_collections.ConfigDict()
    c.ssl.projector_dims = (512, 128)
    c.ssl.temperature = 0.2
    c.ssl.vicreg_weights = (25.0, 25.0, 1.0)
    c.ssl.crop_scale = (0.2, 1.0)
    c.ssl.color_jitter = (0.4, 0.4, 0.2, 0.1)
    c.ssl.color_jitter_probability = 0.8
    c.ssl.grayscale_probability = 0.2
    c.ssl.knn_k = 200
    c.ssl.knn_temperature = 0.1

    # Parameter-efficient fine-tuning (jaxcifar/peft.py): which parameters every stage may train.
    c.peft = ml_collections.ConfigDict()
    c.peft.mode = "full"
    c.peft.rank = 8
    c.peft.alpha = 8.0

    # Global magnitude pruning (jaxcifar/prune.py); sparsity 0 = off.
    c.prune = ml_collections.ConfigDict()
    c.prune.sparsity = 0.0
    c.prune.ramp_fraction = 0.5
    c.prune.every_steps = 10
    c.prune.channels = 0.0

    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = 0
    c.early_stopping.min_delta = 0.0
    c.early_stopping.metric = "val_accuracy"
    return c


def early_stopping_metrics(objective: str) -> dict[str, bool]:
    """The logged metrics early stopping can watch in a run of `objective` (a method's eval
    metrics on the validation split, as history names them) -> whether higher is better.
    Only `val_` metrics: selection never reads the test split (data.eval_split)."""
    return {f"val_{name}": higher for name, higher in methods.info(objective).eval_metrics.items()}


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the fields that take one of a few names; `validate` checks them and
    --help lists them. The objectives and the metrics early stopping can watch come from
    the method registry (jaxcifar/methods), so a registered method is accepted."""
    return {
        "objective": methods.names(),
        "augment.pad_mode": ("constant", "reflect"),
        "augment.normalization": ("cifar10", "imagenet", "unit"),
        "optimizer": ("sgd", "adam", "adamw", "muon"),
        "weight_decay_on": ("kernels", "all"),
        "schedule": ("constant", "cosine", "onecycle", "linear"),
        "early_stopping.metric": tuple(dict.fromkeys(metric for name in methods.names()
                                                     for metric in early_stopping_metrics(name))),
        "peft.mode": peft.MODES,
        "precision": precision.PRECISIONS,
    }


def field_docs(objective: str = "classification") -> dict[str, str]:
    """What each field of `default_config` means, for --help (a test checks none is
    missing): FIELD_DOCS, `objective` from the method registry, and `method.*` from the
    settings `objective` declares."""
    each = "; ".join(f"{name} = {methods.info(name).doc}" for name in methods.names())
    own = {f"method.{field.name}": f"{objective}: {field.help()}" for field in methods.settings(objective)}
    return {"objective": f"what the run learns, a method of jaxcifar/methods: {each}",
            "method": "the objective's own settings (declared in its file in jaxcifar/methods)", **own, **FIELD_DOCS}

FIELD_DOCS: dict[str, str] = {
    "ssl.projector_dims": "self-supervised: widths of the projector MLP on the backbone (the last is the output)",
    "ssl.temperature": "simclr: temperature of the NT-Xent loss",
    "ssl.vicreg_weights": "vicreg: weights of the (invariance, variance, covariance) terms",
    "ssl.crop_scale": "self-supervised views: area fraction range of the random resized crop",
    "ssl.color_jitter": "self-supervised views: (brightness, contrast, saturation, hue) jitter strengths",
    "ssl.color_jitter_probability": "self-supervised views: probability of colour jitter",
    "ssl.grayscale_probability": "self-supervised views: probability of grayscale",
    "ssl.knn_k": "self-supervised eval: neighbours of the weighted kNN monitor (solo-learn/lightly: 200)",
    "ssl.knn_temperature": "self-supervised eval: temperature of the kNN's vote weights exp(sim / T)",
    "model": "network, see jaxcifar.models.MODEL_NAMES (simple_cnn, resnet18, resnet50, airbench, ...)",
    "model_kwargs": "keyword arguments of the model's constructor, e.g. {'width': 16}, {'input_size': 128}, or "
                    "{'dropout': 0.3} (dropout on the features entering the head, in training only)",
    "seed": "initialisation, data order and augmentation all derive from it",
    "precision": "dtype of convolutions, matmuls and activations; parameters, optimizer state, BatchNorm statistics "
                 "and the loss stay float32. auto = bfloat16 on GPU/TPU, float32 on CPU (see jaxcifar/precision.py)",
    "data.dataset": "TFDS image-classification dataset (cifar10, cifar100, svhn_cropped, ...); the class "
                    "count and names come from its info",
    "data.image_folder": "DIR of your own images, DIR/<split>/<class>/*.jpg|png (class names = folder names), "
                         "and unlabelled images in DIR/unlabeled/ (any files); replaces data.dataset and needs "
                         "no --data_dir; '' = off",
    "data.image_size": "side of the square images the model takes; other sizes are resized to it (bilinear, "
                       "antialiased: on the device for a TFDS dataset, on the host for image files)",
    "data.train_split": "split to train on (a TFDS split, or a subfolder of data.image_folder)",
    "data.eval_split": "the test split, evaluated after every epoch for monitoring and at the end for the report, "
                       "never for selection; `test` holds the 1,000 exact test images here; '' = none",
    "data.extra_eval_splits": "splits evaluated once at the end, e.g. ('test_jpeg',) for robustness",
    "data.classes": "a subset of class ids, relabelled 0..k-1 in this order; () = all",
    "data.examples_per_class": "deterministic label budget: the first N images of each class; 0 = all. The rest "
                               "of the train split, without labels, is the unlabelled stream of the methods "
                               "that read one",
    "data.label_seed": "with examples_per_class: None = the first N images of each class in split order; an "
                        "integer = a random draw of N per class with that seed",
    "data.labels_csv": "a filled-in CSV of `python -m jaxcifar.select_labels` (columns index, label): its labelled "
                       "rows are the label budget, every other train image joins the unlabelled stream; '' = off",
    "data.validation_fraction": "> 0: hold this fraction of each class out of train_split (stratified, fixed "
                                "seed, the same for every run; out of the label budget when there is one) as the "
                                "validation split, on which the best "
                                "checkpoint and early stopping are chosen; 0 = no selection: the run's result is "
                                "its final weights",
    "data.device_resident": "keep the uint8 train split on the device and gather batches there "
                            "(the `fast` recipe's path; 150 MB per device)",
    "data.scan_epoch": "with device_resident: run each epoch as one lax.scan (progress and signals "
                       "are handled between epochs)",
    "augment.crop_padding": "random crop from an image padded by this many pixels; 0 = off",
    "augment.pad_mode": "padding of the random crop",
    "augment.flip": "random horizontal flips",
    "augment.alternating_flip": "airbench: each image flipped in every other epoch, not at random",
    "augment.rotation": "max rotation as a fraction of a full turn (Keras RandomRotation)",
    "augment.zoom": "max zoom in/out as a fraction (Keras RandomZoom)",
    "augment.normalization": "input normalisation: CIFAR-10 mean/std, ImageNet mean/std "
                             "(pretrained backbones), or x/255",
    "batch_size": "global train batch, split over all devices",
    "eval_batch_size": "global eval batch (the last one is padded and masked)",
    "label_smoothing": "in [0, 1)",
    "epochs": "epochs of the run (or of each stage that does not set its own)",
    "optimizer": "Optax optimizer (muon: conv and dense kernels only; see group_optimizers)",
    "group_optimizers": "group -> optimizer of that group instead of `optimizer`, e.g. {'filters': 'muon'}",
    "muon_momentum": "muon: Nesterov momentum of the orthogonalised update",
    "muon_ns_steps": "muon: Newton-Schulz iterations per step",
    "lr": "peak learning rate",
    "momentum": "sgd momentum",
    "nesterov": "sgd: Nesterov momentum",
    "b1": "adam/adamw first-moment decay",
    "b2": "adam/adamw second-moment decay",
    "weight_decay": "coupled (L2) weight decay; never applied to frozen parameters",
    "weight_decay_on": "kernels = not biases or BatchNorm parameters; all = every parameter",
    "weight_decay_multipliers": "group -> factor on weight_decay (default 1)",
    "schedule": "learning-rate schedule after a linear warmup",
    "warmup_epochs": "linear warmup from 0 (fractions allowed)",
    "lr_start_factor": "linear schedule: starts at lr_start_factor * lr ...",
    "lr_end_factor": "... and ends at lr_end_factor * lr",
    "lr_multipliers": "group -> learning-rate multiplier; None freezes the group",
    "group_epochs": "group -> trains only during its first N epochs of the stage",
    "param_groups": "group name -> regex over '/'-joined parameter paths; first match wins and "
                    "every parameter must match one",
    "stages": "({'name': ..., **overrides of stage fields}, ...), run in order; () = one stage named `train`",
    "ema_decay": "> 0 keeps an exponential moving average of the weights, which is evaluated",
    "lookahead_every": "airbench's lookahead: every N steps the slow weights (and BatchNorm statistics) "
                       "move towards the fast ones; 0 = off",
    "lookahead_decay": "lookahead: slow += (1 - decay * progress^3) * (fast - slow)",
    "tta": "flip test-time augmentation at evaluation",
    "tta_translate": "with tta: also average views shifted by one pixel (airbench's level 2)",
    "keep_checkpoints": "keep the latest N checkpoints; the best on the validation split is kept as well",
    "log_every_steps": "the progress bar pulls metrics from the device only this often; in a multi-process "
                       "run, stop signals are also agreed on this often",
    "peft.mode": "parameters every stage may train: full = all; linear = the head; bitfit = the head, biases "
                 "and BatchNorm; lora = the head and low-rank adapters on the 3x3/1x1 convs (see jaxcifar/peft.py)",
    "peft.rank": "lora: rank of each conv's adapter",
    "peft.alpha": "lora: the adapter's update is scaled by alpha / rank",
    "prune.sparsity": "global magnitude pruning: the fraction of the trained kernels' weights set to zero and kept "
                      "there (reached along a cubic ramp in each stage); 0 = off",
    "prune.ramp_fraction": "pruning: the fraction of each stage over which sparsity rises to prune.sparsity",
    "prune.every_steps": "pruning: steps between recomputations of the mask",
    "prune.channels": "structured pruning, with --init_from a trained ResNet: the fraction of its basic blocks' "
                      "inner channels removed (smallest |BatchNorm scale| first); the model is built narrower",
    "early_stopping.patience": "end a stage after this many epochs in a row without improvement of "
                               "early_stopping.metric, then go on to the next stage; while on, every stage "
                               "ends on the weights of its best epoch; 0 = off",
    "early_stopping.min_delta": "the smallest change of the metric that counts as an improvement",
    "early_stopping.metric": "the validation metric early stopping watches (accuracy is maximised, loss "
                             "minimised); needs data.validation_fraction > 0",
}


def load_recipe(name_or_path: str) -> ml_collections.ConfigDict:
    """Built-in recipe name (see `recipe_names()`) or path to a file with `get_config()`."""
    path = pathlib.Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.py"
        if not path.exists():
            raise ValueError(
                f"Unknown recipe {name_or_path!r}. Built-in recipes: {', '.join(recipe_names())}; "
                "or pass the path to a Python file that defines get_config()."
            )
    elif not path.exists():
        raise ValueError(f"Config file {str(path)!r} does not exist.")
    spec = importlib.util.spec_from_file_location(f"jaxcifar_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config file {str(path)!r} must define get_config().")
    return module.get_config()


def recipe(base: dict[str, Any] | None = None, **fields: Any) -> ml_collections.ConfigDict:
    """Defaults updated by a recipe's fields; unknown fields are rejected. The `method` block
    starts from the defaults of the objective's settings, then takes the recipe's values."""
    config = default_config()
    updates = dict(base or {}, **fields)
    own = updates.pop("method", {})
    apply_dict(config, updates)
    reset_method_block(config)
    apply_dict(config, {"method": dict(own)})
    return config


def reset_method_block(config: ml_collections.ConfigDict) -> None:
    """`config.method` = the defaults of `config.objective`'s settings, keeping the values of
    the fields the new block shares with the old one (a command line may set a setting
    before it names the objective). An unknown objective is left for `validate` to name."""
    fields = methods.settings(config.objective) if config.objective in methods.names() else ()
    old = config.method.to_dict()
    config.method = ml_collections.ConfigDict({**schema.defaults(fields),
                                               **{k: v for k, v in old.items() if k in {f.name for f in fields}}})


def apply_dict(config: ml_collections.ConfigDict, updates: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    """Merge nested `updates` into `config`, with the same key checks as `override`."""
    for key, value in updates.items():
        _check_key(config, path, key)
        if isinstance(value, dict) and not _is_open(path + (key,)) and key in config:
            apply_dict(config[key], value, path + (key,))
        else:
            config[key] = ordered(value) if isinstance(value, dict) else value


def ordered(d: dict) -> ml_collections.ConfigDict:
    """A ConfigDict that keeps insertion order (ConfigDict sorts keys by default), for
    user-keyed dicts where order means something: param_groups' first match wins."""
    return ml_collections.ConfigDict(d, sort_keys=False)


def override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Apply one `--config.a.b.c=TEXT` override."""
    _refuse_shadowed_stage_default(config, dotted_key)
    *parents, leaf = dotted_key.split(".")
    node, path = config, ()
    for part in parents:
        if isinstance(node, (tuple, list)):  # the stages tuple: address a stage by name
            node, path = _stage_named(node, part), path + (part,)
            continue
        _check_key(node, path, part)
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node, path = node[part], path + (part,)
    _check_key(node, path, leaf)
    try:
        node[leaf] = parse_value(text)
    except TypeError as e:
        raise ValueError(f"Bad value for --config.{dotted_key}={text}: {e}") from None
    if dotted_key == "objective":
        reset_method_block(config)


def _refuse_shadowed_stage_default(config: ml_collections.ConfigDict, dotted_key: str) -> None:
    """A top-level stage field that every stage of the recipe sets for itself would change
    nothing (`ssl_finetune --config.epochs=1` once trained 40 epochs): refuse it, naming the
    per-stage overrides that do what was meant."""
    stages = [dict(stage) for stage in config.stages]
    if dotted_key not in STAGE_FIELDS or not stages or not all(dotted_key in stage for stage in stages):
        return
    per_stage = " ".join(f"--config.stages.{s['name']}.{dotted_key}=..." for s in stages)
    current = ", ".join(f"{s['name']} {s[dotted_key]!r}" for s in stages)
    raise ValueError(f"--config.{dotted_key} changes nothing here: every stage of this recipe sets its own "
                     f"{dotted_key} ({current}). Set it per stage: {per_stage}")


# Dicts whose keys are chosen by the user rather than fixed by the schema.
OPEN_DICTS = ("model_kwargs", "lr_multipliers", "param_groups", "group_epochs", "weight_decay_multipliers",
              "group_optimizers")


def _stage_named(stages, name: str) -> dict:
    for stage in stages:
        if stage["name"] == name:
            return stage
    raise ValueError(f"No stage named {name!r}; stages: {[s['name'] for s in stages]}")


def _is_open(path: tuple[str, ...]) -> bool:
    return bool(path) and path[-1] in OPEN_DICTS


def _check_key(node: ml_collections.ConfigDict, path: tuple[str, ...], key: str) -> None:
    dotted = ".".join(path + (key,))
    if len(path) == 2 and path[0] == "stages":
        if key not in STAGE_FIELDS + ("name",):
            raise ValueError(f"Unknown stage field {dotted!r}.{schema.did_you_mean(key, STAGE_FIELDS)} "
                             f"Stage fields: {', '.join(STAGE_FIELDS)}")
    elif key not in node and not _is_open(path):
        where = "The run's objective has these settings" if path == ("method",) else "Valid fields here"
        raise ValueError(f"Unknown config field {dotted!r}.{schema.did_you_mean(key, node.keys())} "
                         f"{where}: {', '.join(sorted(node.keys())) or 'none'}")


def parse_value(text: str) -> Any:
    """Python literal if it parses as one (3, 1e-4, None, (0, 1)), else the raw string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def stage_plan(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """[(name, full stage config)] in order: the defaults overridden by each stage."""
    plan = []
    for overrides in config.stages or ({"name": "train"},):
        overrides = dict(overrides)
        name = overrides.pop("name", None)
        if not name:
            raise ValueError(f"Every stage needs a 'name'; got {overrides}.")
        stage = ml_collections.ConfigDict({f: config[f] for f in STAGE_FIELDS})
        for key, value in overrides.items():
            if key not in STAGE_FIELDS:
                raise ValueError(f"Stage {name!r} sets {key!r}, which is not a stage field ({', '.join(STAGE_FIELDS)}).")
            try:
                stage[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
            except TypeError as e:
                raise ValueError(f"Stage {name!r}, field {key!r}: {e}") from None
        plan.append((name, stage))
    return plan


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Reject values that would fail later, or silently do the wrong thing."""
    errors = []
    if config.batch_size <= 0 or config.batch_size % num_devices:
        errors.append(f"batch_size={config.batch_size} must be positive and divisible by the {num_devices} devices.")
    if config.eval_batch_size <= 0 or config.eval_batch_size % num_devices:
        errors.append(f"eval_batch_size={config.eval_batch_size} must be positive and divisible by the {num_devices} devices.")
    if not 0.0 <= config.label_smoothing < 1.0:
        errors.append(f"label_smoothing={config.label_smoothing} must be in [0, 1).")
    if not 0.0 <= config.ema_decay < 1.0:
        errors.append(f"ema_decay={config.ema_decay} must be in [0, 1).")
    if config.lookahead_every < 0 or not 0.0 <= config.lookahead_decay <= 1.0:
        errors.append(f"lookahead_every={config.lookahead_every} must be >= 0 and lookahead_decay="
                      f"{config.lookahead_decay} in [0, 1].")
    if not 0.0 <= config.model_kwargs.get("dropout", 0.0) < 1.0:
        errors.append(f"model_kwargs.dropout={config.model_kwargs.dropout} must be in [0, 1).")
    if config.early_stopping.patience < 0 or config.early_stopping.min_delta < 0:
        errors.append(f"early_stopping.patience={config.early_stopping.patience} and min_delta="
                      f"{config.early_stopping.min_delta} must not be negative.")
    if not 0.0 <= config.prune.sparsity < 1.0 or not 0.0 < config.prune.ramp_fraction <= 1.0:
        errors.append(f"prune.sparsity={config.prune.sparsity} must be in [0, 1) and prune.ramp_fraction="
                      f"{config.prune.ramp_fraction} in (0, 1].")
    if not 0.0 <= config.prune.channels < 1.0:
        errors.append(f"prune.channels={config.prune.channels} must be in [0, 1).")
    if config.prune.channels and config.peft.mode != "full":
        errors.append(f"prune.channels with peft.mode={config.peft.mode!r}: an adapter is saved against its base "
                      "run's weights, which a narrowed network no longer has. Prune first, then adapt the pruned run.")
    if config.prune.every_steps < 1:
        errors.append(f"prune.every_steps={config.prune.every_steps} must be at least 1.")
    if config.prune.sparsity and (config.lookahead_every or config.ema_decay):
        errors.append("prune.sparsity > 0 cannot be combined with lookahead_every or ema_decay: their averaged "
                      "weights would bring pruned weights back. Set them to 0 for a pruning run.")
    if config.peft.rank < 1:
        errors.append(f"peft.rank={config.peft.rank} must be at least 1.")
    for field in ("objective", "augment.normalization", "augment.pad_mode", "early_stopping.metric", "peft.mode",
                  "precision"):
        errors += _choice_error(field, functools.reduce(lambda node, key: node[key], field.split("."), config))
    if config.objective in methods.names():
        errors += schema.errors(methods.settings(config.objective), config.method, "method")
    watchable = early_stopping_metrics(config.objective) if config.objective in methods.names() else {}
    if config.early_stopping.patience and config.early_stopping.metric not in watchable:
        errors.append(f"early_stopping.metric={config.early_stopping.metric!r}: objective {config.objective!r} "
                      f"evaluates {' and '.join(watchable)}.")
    if config.early_stopping.patience and not config.data.validation_fraction:
        errors.append("early_stopping.patience > 0 picks epochs on a validation split held out of the training "
                      "images, never on the test split: add --config.data.validation_fraction=0.1.")
    if not config.data.eval_split and not config.data.validation_fraction:
        errors.append("data.eval_split='' and data.validation_fraction=0: the run would be evaluated on nothing. "
                      "Name a test split or hold out a validation split (--config.data.validation_fraction=0.1).")
    if config.data.image_size < 1:
        errors.append(f"data.image_size={config.data.image_size} must be a positive number of pixels.")
    if config.data.label_seed is not None and (not isinstance(config.data.label_seed, int) or config.data.label_seed < 0):
        errors.append(f"data.label_seed={config.data.label_seed!r} must be None or a whole number >= 0.")
    if config.data.labels_csv and config.data.examples_per_class:
        errors.append("data.labels_csv and data.examples_per_class both choose the label budget: set one of them.")
    if not 0.0 <= config.data.validation_fraction < 1.0:
        errors.append(f"data.validation_fraction={config.data.validation_fraction} must be in [0, 1).")
    if config.data.scan_epoch and not config.data.device_resident:
        errors.append("data.scan_epoch=True needs data.device_resident=True (the scan gathers batches on the device).")
    if config.keep_checkpoints < 1:
        errors.append(f"keep_checkpoints={config.keep_checkpoints} must be at least 1.")
    for name, stage in stage_plan(config):
        where = f"stages.{name}." if config.stages else ""
        if stage.epochs < 0:
            errors.append(f"{where}epochs={stage.epochs} must not be negative.")
        if stage.lr <= 0:
            errors.append(f"{where}lr={stage.lr} must be positive.")
        for field in ("optimizer", "schedule", "weight_decay_on"):
            errors += _choice_error(field, stage[field], where)
        for group, optimizer in stage.group_optimizers.items():
            errors += _choice_error("optimizer", optimizer, f"{where}group_optimizers.{group}: ")
        for group in muon_groups(stage):
            if stage.weight_decay * stage.weight_decay_multipliers.get(group, 1.0):
                errors.append(f"{where}group {group!r} uses muon, which renormalises its kernels every step and "
                              f"takes no weight decay: set weight_decay_multipliers.{group}=0 (or weight_decay=0).")
        for field in ("lr_multipliers", "group_epochs", "weight_decay_multipliers", "group_optimizers"):
            unknown = set(stage[field]) - set(config.param_groups)
            if unknown:
                errors.append(f"{where}{field} names unknown groups {sorted(unknown)}; "
                              f"groups are {list(config.param_groups)}.")
        for group, epochs in stage.group_epochs.items():
            if not 0 < epochs <= stage.epochs:
                errors.append(f"{where}group_epochs.{group}={epochs} must be in (0, {stage.epochs}] (the stage's epochs).")
        missing = set(config.param_groups) - set(stage.lr_multipliers)
        if missing:
            errors.append(f"{where}lr_multipliers gives no multiplier (use None to freeze) for groups {sorted(missing)}.")
    if errors:
        raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def muon_groups(stage: ml_collections.ConfigDict) -> list[str]:
    """The trainable groups of `stage` that Muon updates."""
    return [group for group, multiplier in stage.lr_multipliers.items()
            if multiplier is not None and stage.group_optimizers.get(group, stage.optimizer) == "muon"]


def _choice_error(field: str, value: Any, where: str = "") -> list[str]:
    allowed = choices()[field]
    return [] if value in allowed else [f"{where}{field}={value!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}."]


def describe_fields(config: ml_collections.ConfigDict | None = None) -> str:
    """One line per field with its value in `config` (default: the base defaults), what it
    means and its allowed values, for --help."""
    config = config or default_config()
    flat = _flatten(config.to_dict())
    docs, allowed = field_docs(config.objective if config.objective in methods.names() else "classification"), choices()
    lines = []
    for key, value in flat.items():
        doc = docs.get(key, "")
        if key in allowed:
            doc += f" ({' | '.join(allowed[key])})"
        lines.append(f"  --config.{key}={value!r}" + (f"\n      {doc}" if doc else ""))
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of a config dict; user-keyed dicts (OPEN_DICTS) stay whole."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in OPEN_DICTS:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
