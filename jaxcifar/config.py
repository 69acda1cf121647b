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
import importlib.util
import pathlib
from typing import Any

import ml_collections

RECIPE_DIR = pathlib.Path(__file__).parent / "configs"

# Fields a stage may override; everything else is run-wide.
STAGE_FIELDS = (
    "epochs", "optimizer", "lr", "momentum", "nesterov", "b1", "b2", "weight_decay",
    "schedule", "warmup_epochs", "lr_start_factor", "lr_end_factor", "lr_multipliers", "group_epochs",
    "weight_decay_on", "weight_decay_multipliers",
)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.py") if not p.stem.startswith("_"))


def default_config() -> ml_collections.ConfigDict:
    """Every field a recipe can set, with the values a recipe inherits."""
    c = ml_collections.ConfigDict()
    c.model = "simple_cnn"
    c.model_kwargs = ml_collections.ConfigDict()  # passed to jaxcifar.models.create_model
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"
    c.data.train_split = "train"
    c.data.eval_split = "test"  # the 1,000 exact test images; `test_jpeg` is for robustness only
    c.data.extra_eval_splits = ()  # evaluated once at the end, e.g. ("test_jpeg",) for robustness
    c.data.classes = ()  # a subset of class ids, relabelled 0..k-1 in this order; () = all
    c.data.examples_per_class = 0  # deterministic label budget per class; 0 = all
    # Keep the uint8 train split on the device and gather batches there (no per-step host
    # input work); the `fast` recipe's path. Costs 150 MB of device memory per device.
    c.data.device_resident = False
    # With device_resident: each epoch runs as one lax.scan in one jitted call (no per-step
    # dispatch; the progress bar and SIGTERM/SIGINT are handled between epochs).
    c.data.scan_epoch = False

    # Applied on the device inside the jitted train step (see jaxcifar/augment.py).
    c.augment = ml_collections.ConfigDict()
    c.augment.crop_padding = 4  # random crop from a padded image; 0 disables
    c.augment.pad_mode = "constant"  # constant (zeros) | reflect
    c.augment.flip = True
    c.augment.alternating_flip = False  # airbench: each image flipped in every other epoch, not at random
    c.augment.rotation = 0.0  # max rotation as a fraction of a full turn (Keras RandomRotation)
    c.augment.zoom = 0.0  # max zoom in/out as a fraction (Keras RandomZoom)
    # cifar10 | imagenet (for ImageNet-pretrained backbones) | unit (the seed's x/255)
    c.augment.normalization = "cifar10"

    c.batch_size = 256  # global batch, split over all devices
    c.eval_batch_size = 500
    c.label_smoothing = 0.0

    # Stage defaults.
    c.epochs = 10
    c.optimizer = "sgd"  # sgd | adam | adamw
    c.lr = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.b1 = 0.9
    c.b2 = 0.999
    c.weight_decay = 5e-4  # coupled (L2); never applied to frozen parameters
    c.weight_decay_on = "kernels"  # kernels (not biases or BatchNorm) | all
    c.weight_decay_multipliers = ml_collections.ConfigDict()  # group -> factor on weight_decay (default 1)
    c.schedule = "cosine"  # constant | cosine | onecycle | linear (each with linear warmup)
    c.warmup_epochs = 1.0
    c.lr_start_factor = 0.0  # linear: warmup starts at lr_start_factor * lr ...
    c.lr_end_factor = 0.0  # ... and decays to lr_end_factor * lr
    c.lr_multipliers = ml_collections.ConfigDict({"all": 1.0})  # group -> multiplier; None freezes
    c.group_epochs = ml_collections.ConfigDict()  # group -> trains only its first N epochs of the stage

    # Parameter groups: name -> regex over '/'-joined parameter paths. First match wins,
    # every parameter must match one.
    c.param_groups = ordered({"all": ".*"})
    c.stages = ()  # ({"name": ..., **overrides of STAGE_FIELDS}, ...), run in order

    c.ema_decay = 0.0  # >0 keeps an exponential moving average of the weights for eval
    # Lookahead (airbench): every N steps the slow weights (and BatchNorm statistics) move
    # towards the fast ones by 1 - decay * (progress through the stage)^3 and the fast
    # weights restart from them; the stage ends on the slow weights. 0 = off.
    c.lookahead_every = 0
    c.lookahead_decay = 0.95**5
    c.tta = False  # flip test-time augmentation at evaluation
    c.tta_translate = False  # with tta: also average views shifted by one pixel (airbench's level 2)
    c.keep_checkpoints = 2  # latest N; the best by eval accuracy is kept as well
    c.log_every_steps = 25  # host sync for the progress bar happens only this often
    return c


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
    """Defaults updated by a recipe's fields; unknown fields are rejected."""
    config = default_config()
    apply_dict(config, dict(base or {}, **fields))
    return config


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


# Dicts whose keys are chosen by the user rather than fixed by the schema.
OPEN_DICTS = ("model_kwargs", "lr_multipliers", "param_groups", "group_epochs", "weight_decay_multipliers")


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
            raise ValueError(f"Unknown stage field {dotted!r}. Stage fields: {', '.join(STAGE_FIELDS)}")
    elif key not in node and not _is_open(path):
        raise ValueError(f"Unknown config field {dotted!r}. Valid fields here: {', '.join(sorted(node.keys()))}")


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
    if config.augment.normalization not in ("cifar10", "imagenet", "unit"):
        errors.append(f"augment.normalization={config.augment.normalization!r}: use cifar10, imagenet or unit.")
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
        if stage.optimizer not in ("sgd", "adam", "adamw"):
            errors.append(f"{where}optimizer={stage.optimizer!r}: use sgd, adam or adamw.")
        if stage.schedule not in ("constant", "cosine", "onecycle", "linear"):
            errors.append(f"{where}schedule={stage.schedule!r}: use constant, cosine, onecycle or linear.")
        for field in ("lr_multipliers", "group_epochs", "weight_decay_multipliers"):
            unknown = set(stage[field]) - set(config.param_groups)
            if unknown:
                errors.append(f"{where}{field} names unknown groups {sorted(unknown)}; "
                              f"groups are {list(config.param_groups)}.")
        if stage.weight_decay_on not in ("kernels", "all"):
            errors.append(f"{where}weight_decay_on={stage.weight_decay_on!r}: use kernels or all.")
        for group, epochs in stage.group_epochs.items():
            if not 0 < epochs <= stage.epochs:
                errors.append(f"{where}group_epochs.{group}={epochs} must be in (0, {stage.epochs}] (the stage's epochs).")
        missing = set(config.param_groups) - set(stage.lr_multipliers)
        if missing:
            errors.append(f"{where}lr_multipliers gives no multiplier (use None to freeze) for groups {sorted(missing)}.")
    if errors:
        raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def describe_fields(config: ml_collections.ConfigDict | None = None) -> str:
    """One line per field with its default, for --help."""
    flat = _flatten((config or default_config()).to_dict())
    return "\n".join(f"  --config.{k}={v!r}" for k, v in flat.items())


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
