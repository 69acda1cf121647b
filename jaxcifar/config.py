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

from jaxcifar import (augment_fields, data_fields, early_stopping_fields, methods, optim_fields, peft_fields,
                      precision_fields, prune_fields, schema, ssl_fields)

RECIPE_DIR = pathlib.Path(__file__).parent / "configs"


def _objective_doc() -> str:
    each = "; ".join(f"{name} = {methods.info(name).doc}" for name in methods.names())
    return f"what the run learns, a method of jaxcifar/methods: {each}"


def _dropout(model_kwargs: Any) -> str:
    message = schema.in_range(0, 1, high_open=True)(model_kwargs.get("dropout", 0.0))
    return message and f"dropout {message}"


# Every field of a config, each declared once (schema.Field) by the feature that owns it, in
# its `*_fields` module; the run-wide ones here. `default_config`, --help (`field_docs`),
# `choices`, `STAGE_FIELDS`, `OPEN_DICTS` and the per-field checks of `validate` are derived
# from them; the order here is only the order of the stage fields in --help.
FIELDS: tuple[schema.Field, ...] = (
    schema.Field("objective", "classification", _objective_doc, choices=methods.names),
    # The objective's own settings, declared by its method (methods.settings); filled by `recipe`.
    schema.Field("method", {}, "the objective's own settings (declared in its file in jaxcifar/methods)"),
    schema.Field("model", "simple_cnn", "network, see jaxcifar.models.MODEL_NAMES (simple_cnn, resnet18, resnet50, "
                                        "airbench, ...)"),
    schema.Field("model_kwargs", {}, "keyword arguments of the model's constructor, e.g. {'width': 16} or "
                                     "{'dropout': 0.3} (dropout on the features entering the head, in training "
                                     "only)", check=_dropout, keyed=True),
    schema.Field("seed", 0, "initialisation, data order and augmentation all derive from it"),
    *precision_fields.FIELDS,
    *data_fields.FIELDS,
    *augment_fields.FIELDS,
    schema.Field("batch_size", 256, "global train batch, split over all devices"),
    schema.Field("eval_batch_size", 500, "global eval batch (the last one is padded and masked)"),
    schema.Field("label_smoothing", 0.0, "in [0, 1)", check=schema.in_range(0, 1, high_open=True)),
    *optim_fields.FIELDS,
    schema.Field("stages", (), "({'name': ..., **overrides of stage fields}, ...), run in order; () = one stage "
                               "named `train`"),
    schema.Field("ema_decay", 0.0, "> 0 keeps an exponential moving average of the weights, which is evaluated",
                 check=schema.in_range(0, 1, high_open=True)),
    schema.Field("lookahead_every", 0, "airbench's lookahead: every N steps the slow weights (and BatchNorm "
                                       "statistics) move towards the fast ones; 0 = off", check=schema.in_range(0)),
    schema.Field("lookahead_decay", 0.95**5, "lookahead: slow += (1 - decay * progress^3) * (fast - slow)",
                 check=schema.fraction),
    schema.Field("tta", False, "flip test-time augmentation at evaluation"),
    schema.Field("tta_translate", False, "with tta: also average views shifted by one pixel (airbench's level 2)"),
    schema.Field("keep_checkpoints", 2, "keep the latest N checkpoints; the best on the validation split is kept as "
                                        "well", check=schema.positive_int),
    schema.Field("tensorboard", True, "also write TensorBoard events (WORKDIR/tensorboard; needs TensorFlow, whose "
                                      "import costs seconds in a fresh process); metrics.jsonl is written either way"),
    schema.Field("log_every_steps", 25, "the progress bar pulls metrics from the device only this often; in a "
                                        "multi-process run, stop signals are also agreed on this often"),
    *ssl_fields.FIELDS,
    *peft_fields.FIELDS,
    *prune_fields.FIELDS,
    *early_stopping_fields.FIELDS,
)
# Fields a stage may override; everything else is run-wide.
STAGE_FIELDS = tuple(field.name for field in FIELDS if field.stage)
# Dicts whose keys are chosen by the user rather than fixed by the schema.
OPEN_DICTS = tuple(field.name for field in FIELDS if field.keyed)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.py") if not p.stem.startswith("_"))


def default_config() -> ml_collections.ConfigDict:
    """Every field a recipe can set (`FIELDS`), with the values a recipe inherits."""
    config = ml_collections.ConfigDict()
    for field in FIELDS:
        *blocks, leaf = field.name.split(".")
        node = config
        for name in blocks:
            if name not in node:
                node[name] = ml_collections.ConfigDict()
            node = node[name]
        # A dict default is keyed by the user (or filled by `recipe`): it keeps the order it is
        # written in, as a recipe's does (`apply_dict`), since param_groups' first match wins.
        node[leaf] = ordered(field.default) if isinstance(field.default, dict) else field.default
    return config


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the fields that take one of a few names; `validate` checks them and
    --help lists them. The objectives and the metrics early stopping can watch come from
    the method registry (jaxcifar/methods), so a registered method is accepted."""
    return {field.name: field.allowed() for field in FIELDS if field.choices}


def field_docs(objective: str = "classification") -> dict[str, str]:
    """What each field of `default_config` means and the values it allows, for --help:
    `FIELDS`, and `method.*` from the settings `objective` declares."""
    own = {field.name: f"{objective}: {field.help()}" for field in _method_fields(objective)}
    return {**{field.name: field.help() for field in FIELDS}, **own}


def _method_fields(objective: str) -> tuple[schema.Field, ...]:
    return schema.block("method", methods.settings(objective))


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
    updates = _without_input_size(dict(base or {}, **fields))
    own = updates.pop("method", {})
    apply_dict(config, updates)
    reset_method_block(config)
    apply_dict(config, {"method": dict(own)})
    return config


def _without_input_size(updates: dict[str, Any]) -> dict[str, Any]:
    """`updates` with `model_kwargs.input_size` read as `data.image_size`. It was a second
    resize option, inside ResNets (after augmentation, where `data.image_size` resizes
    before it); `data.image_size` is now the only one. A config.json recorded before holds
    it, and `runs.read_config` rebuilds every stored config through `recipe`: this is the
    one place it is translated. The weights do not depend on the input size, and the
    evaluation input is the same up to rounding (bilinear resizing commutes with the
    normalisation)."""
    model_kwargs = dict(updates.get("model_kwargs") or {})
    if "input_size" not in model_kwargs:
        return updates
    size = model_kwargs.pop("input_size")
    data = dict(updates.get("data") or {}, **({} if size is None else {"image_size": size}))
    return {**updates, "model_kwargs": model_kwargs, "data": data}


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
    """Reject values that would fail later, or silently do the wrong thing: each field's
    value as its declaration allows (a stage field's in every stage), then the checks that
    read several fields."""
    errors = schema.errors([field for field in FIELDS if not field.stage], config)
    if config.objective in methods.names():
        errors += schema.errors(_method_fields(config.objective), config)
    errors += [f"{name}={config[name]} must be positive and divisible by the {num_devices} devices."
               for name in ("batch_size", "eval_batch_size") if config[name] <= 0 or config[name] % num_devices]
    if config.prune.channels and config.peft.mode != "full":
        errors.append(f"prune.channels with peft.mode={config.peft.mode!r}: an adapter is saved against its base "
                      "run's weights, which a narrowed network no longer has. Prune first, then adapt the pruned run.")
    if config.peft.train_norms and config.peft.mode != "lora":
        errors.append(f"peft.train_norms with peft.mode={config.peft.mode!r}: it adds bitfit's parameters to lora's, "
                      "and only there (bitfit and full already train them; linear with them is bitfit). Use "
                      "--config.peft.mode=lora, or drop peft.train_norms.")
    if config.prune.sparsity and (config.lookahead_every or config.ema_decay):
        errors.append("prune.sparsity > 0 cannot be combined with lookahead_every or ema_decay: their averaged "
                      "weights would bring pruned weights back. Set them to 0 for a pruning run.")
    watchable = (early_stopping_fields.watchable_metrics(config.objective)
                 if config.objective in methods.names() else {})
    if config.early_stopping.patience and config.early_stopping.metric not in watchable:
        errors.append(f"early_stopping.metric={config.early_stopping.metric!r}: objective {config.objective!r} "
                      f"evaluates {' and '.join(watchable)}.")
    if config.early_stopping.patience and not config.data.validation_fraction:
        errors.append("early_stopping.patience > 0 picks epochs on a validation split held out of the training "
                      "images, never on the test split: add --config.data.validation_fraction=0.1.")
    if not config.data.eval_split and not config.data.validation_fraction:
        errors.append("data.eval_split='' and data.validation_fraction=0: the run would be evaluated on nothing. "
                      "Name a test split or hold out a validation split (--config.data.validation_fraction=0.1).")
    if config.data.labels_csv and config.data.examples_per_class:
        errors.append("data.labels_csv and data.examples_per_class both choose the label budget: set one of them.")
    if config.data.scan_epoch and not config.data.device_resident:
        errors.append("data.scan_epoch=True needs data.device_resident=True (the scan gathers batches on the device).")
    for name, stage in stage_plan(config):
        errors += _stage_errors(stage, config.param_groups, f"stages.{name}." if config.stages else "")
    if errors:
        raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def _stage_errors(stage: ml_collections.ConfigDict, param_groups: Any, where: str) -> list[str]:
    """What is wrong with one stage of `stage_plan`: its fields' values, and its groups."""
    errors = schema.errors([field for field in FIELDS if field.stage], stage, where)
    for group in muon_groups(stage):
        if stage.weight_decay * stage.weight_decay_multipliers.get(group, 1.0):
            errors.append(f"{where}group {group!r} uses muon, which renormalises its kernels every step and "
                          f"takes no weight decay: set weight_decay_multipliers.{group}=0 (or weight_decay=0).")
    for field in (field.name for field in FIELDS if field.stage and field.keyed):  # each keyed by group
        unknown = set(stage[field]) - set(param_groups)
        if unknown:
            errors.append(f"{where}{field} names unknown groups {sorted(unknown)}; groups are {list(param_groups)}.")
    for group, epochs in stage.group_epochs.items():
        if not 0 < epochs <= stage.epochs:
            errors.append(f"{where}group_epochs.{group}={epochs} must be in (0, {stage.epochs}] (the stage's epochs).")
    missing = set(param_groups) - set(stage.lr_multipliers)
    if missing:
        errors.append(f"{where}lr_multipliers gives no multiplier (use None to freeze) for groups {sorted(missing)}.")
    return errors


def muon_groups(stage: ml_collections.ConfigDict) -> list[str]:
    """The trainable groups of `stage` that Muon updates."""
    return [group for group, multiplier in stage.lr_multipliers.items()
            if multiplier is not None and stage.group_optimizers.get(group, stage.optimizer) == "muon"]


def describe_fields(config: ml_collections.ConfigDict | None = None) -> str:
    """One line per field with its value in `config` (default: the base defaults), what it
    means and its allowed values, for --help."""
    config = config or default_config()
    docs = field_docs(config.objective if config.objective in methods.names() else "classification")
    lines = []
    for key, value in _flatten(config.to_dict()).items():
        doc = docs.get(key, "")
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
