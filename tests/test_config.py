import json
import pathlib
import subprocess
import sys

import pytest

from jaxcifar import config as config_lib
from jaxcifar import runs, workdir
from jaxcifar.cli.train import build_config, parse_args

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_recipe_loads_and_validates():
    assert {"simple_cnn", "resnet18"} <= set(config_lib.recipe_names())
    for name in config_lib.recipe_names():
        cfg = config_lib.load_recipe(name)
        config_lib.validate(cfg, num_devices=1)


def test_dotted_overrides_change_fields_with_types():
    cfg = build_config("simple_cnn", [("epochs", "3"), ("batch_size", "128"), ("seed", "1"), ("lr", "1e-4"),
                                      ("augment.flip", "False"), ("data.classes", "(5, 6)")])
    assert (cfg.epochs, cfg.batch_size, cfg.seed, cfg.lr, cfg.augment.flip) == (3, 128, 1, 1e-4, False)
    assert tuple(cfg.data.classes) == (5, 6)


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ValueError, match="simple_cnn"):
        config_lib.load_recipe("no_such_recipe")


def test_unknown_field_lists_valid_fields():
    with pytest.raises(ValueError, match="Unknown config field 'epochz'.*epochs"):
        build_config("simple_cnn", [("epochz", "3")])
    with pytest.raises(ValueError, match="augment.flop"):
        build_config("simple_cnn", [("augment.flop", "1")])


def test_wrong_type_is_rejected():
    with pytest.raises(ValueError, match="epochs"):
        build_config("simple_cnn", [("epochs", "three")])


@pytest.mark.parametrize("key,value,message", [
    ("epochs", "-1", "epochs=-1: must be >= 0"),
    ("batch_size", "100", "divisible by the 8 devices"),
    ("lr", "0.0", "lr=0.0: must be a positive number"),
    ("optimizer", "'rmsprop'", "use sgd, adam, adamw or muon"),
    ("early_stopping.patience", "-1", "early_stopping.patience=-1: must be >= 0"),
    ("model_kwargs.dropout", "1.0", r"model_kwargs=.*'dropout': 1.0.*: dropout must be in \[0, 1\)"),
    ("group_optimizers.all", "'rmsprop'", r"group_optimizers=.*: use sgd, adam, adamw or muon"),
])
def test_validation_errors_name_the_field(key, value, message):
    cfg = build_config("simple_cnn", [(key, value)])
    with pytest.raises(ValueError, match=message):
        config_lib.validate(cfg, num_devices=8)


def test_stage_overrides_inherit_defaults():
    cfg = config_lib.recipe(epochs=4, lr=0.1, param_groups={"backbone": "backbone/.*", "head": "head/.*"},
                            lr_multipliers={"backbone": 1.0, "head": 1.0},
                            stages=({"name": "frozen", "epochs": 1, "lr_multipliers": {"backbone": None, "head": 1.0}},
                                    {"name": "finetune", "lr": 1e-3}))
    config_lib.override(cfg, "stages.finetune.epochs", "2")
    plan = dict(config_lib.stage_plan(cfg))
    assert list(plan) == ["frozen", "finetune"]
    assert (plan["frozen"].epochs, plan["frozen"].lr, plan["frozen"].lr_multipliers["backbone"]) == (1, 0.1, None)
    assert (plan["finetune"].epochs, plan["finetune"].lr) == (2, 1e-3)
    with pytest.raises(ValueError, match="Unknown stage field"):
        config_lib.override(cfg, "stages.finetune.model", "'resnet18'")
    with pytest.raises(ValueError, match="No stage named 'warmup'"):
        config_lib.override(cfg, "stages.warmup.lr", "1.0")


def test_cli_parses_config_and_distributed_flags():
    args, overrides = parse_args(["--config", "resnet18", "--workdir", "w", "--config.epochs=1",
                                  "--distributed.coordinator=127.0.0.1:1234", "--distributed.num_processes=2",
                                  "--distributed.process_id=1"])
    assert (args.config, args.workdir, args.coordinator, args.num_processes, args.process_id) == (
        "resnet18", "w", "127.0.0.1:1234", 2, 1)
    assert overrides == [("epochs", "1")]
    with pytest.raises(SystemExit):
        parse_args(["--config", "x", "--workdir", "w", "--bogus"])


def test_help_shows_the_chosen_recipes_values_with_meaning_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", "simple_cnn", "--help"])
    text = capsys.readouterr().out
    # simple_cnn's own values, not the base defaults (sgd, 0.1, 256)
    assert "--config.optimizer='adam'" in text and "--config.batch_size=64" in text
    assert "--config.lr=0.002" in text
    assert "(sgd | adam | adamw | muon)" in text and "global train batch" in text


def test_help_without_a_loadable_recipe_shows_the_base_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "--config.optimizer='sgd'" in capsys.readouterr().out


def test_every_field_is_documented_and_every_choice_validated():
    fields = set(config_lib._flatten(config_lib.default_config().to_dict()))
    assert fields == set(config_lib.field_docs())
    for field, allowed in config_lib.choices().items():
        cfg = build_config("simple_cnn", [(field, repr("bogus"))])
        with pytest.raises(ValueError, match=f"{field}='bogus': use {', '.join(allowed[:-1])} or {allowed[-1]}"):
            config_lib.validate(cfg, num_devices=1)


def test_a_config_json_with_the_old_resize_option_opens_with_data_image_size(tmp_path):
    recipe = workdir.config_json(config_lib.load_recipe("resnet50_transfer"))
    # As resnet50_transfer's runs recorded it when ResNets resized their input themselves.
    old = {**recipe, "model_kwargs": {"input_size": 128}, "data": {**recipe["data"], "image_size": 32}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert workdir.config_json(runs.read_config(tmp_path)) == recipe


# Run in a fresh process: this one imported JAX long ago (cli.train).
READ_WITHOUT_JAX = """
import sys
import jaxcifar  # sets XLA:CPU flags (xla_cpu.py), which must not take importing JAX
assert "jax" not in sys.modules, "import jaxcifar imported jax"
from jaxcifar import config
for name in config.recipe_names():
    recipe = config.load_recipe(name)
    config.validate(recipe, 1)
    config.describe_fields(recipe)
print(sorted(module for module in ("jax", "jaxlib", "flax", "optax", "tensorflow") if module in sys.modules))
"""


def test_a_config_is_read_validated_and_documented_without_jax_or_flax():
    done = subprocess.run([sys.executable, "-c", READ_WITHOUT_JAX], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[]", "these were imported: " + done.stdout
