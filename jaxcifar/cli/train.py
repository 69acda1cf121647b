"""`python -m jaxcifar.train`: the command line of the training loop (jaxcifar/train.py).

    python -m jaxcifar.train --config simple_cnn --workdir runs/cnn --data_dir ../shared/tensorflow_datasets \
        --config.epochs=3
"""

from __future__ import annotations

import argparse
import sys

import jax
import ml_collections

from jaxcifar import config as config_lib
from jaxcifar import parallel
from jaxcifar.cli import USAGE_ERROR, reports_user_errors, shows_progress
from jaxcifar.progress import finished_line
from jaxcifar.stop_signals import StopRequested
from jaxcifar.train import NonFiniteLoss, fit, log


def help_epilog(argv: list[str]) -> str:
    """--help's field list, with the values of the recipe named by --config (if it loads),
    so `--config simple_cnn --help` shows what simple_cnn will really use."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    name = pre.parse_known_args(argv)[0].config
    try:
        config, source = config_lib.load_recipe(name), f"recipe {name!r}"
    except (ValueError, TypeError, OSError, SyntaxError):  # no or a broken --config: show the base defaults
        config, source = config_lib.default_config(), "the base defaults (pass --config NAME for a recipe's)"
    stages = "".join(f"\n  {stage}" for stage in config.stages)
    return (f"Recipes (--config NAME): {', '.join(config_lib.recipe_names())}\n"
            "Or --config path/to/file.py defining get_config().\n\n"
            f"Fields, with the values of {source}. Override any with --config.FIELD=VALUE (Python literals):\n"
            f"{config_lib.describe_fields(config)}\n\n"
            f"Stages{' of this recipe:' + stages if stages else ': this recipe has one stage, `train`.'}\n"
            "Override a stage's field with --config.stages.NAME.FIELD=VALUE; stage fields: "
            f"{', '.join(config_lib.STAGE_FIELDS)}.\n")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.train",
        description="Train an image classifier (CIFAR-10, any TFDS dataset, or a folder of images) with JAX.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_epilog(argv))
    parser.add_argument("--config", required=True, help="recipe name or path to a config file")
    parser.add_argument("--workdir", required=True, help="run directory: checkpoints, logs, summary.json")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, then TFDS's own)")
    parser.add_argument("--init_from", default=None,
                        help="backbone source: a jaxcifar workdir/checkpoint dir, or torchvision/timm .safetensors/.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a workdir holding an incompatible run (the old run is moved aside, not deleted)")
    parser.add_argument("--distributed.coordinator", dest="coordinator", default=None, help="HOST:PORT of process 0")
    parser.add_argument("--distributed.num_processes", dest="num_processes", type=int, default=None)
    parser.add_argument("--distributed.process_id", dest="process_id", type=int, default=None)
    parser.add_argument("--distributed.auto", dest="auto_distributed", action="store_true",
                        help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config.") or "=" not in item:
            parser.error(f"unrecognized argument {item!r}; config overrides look like --config.FIELD=VALUE")
        key, value = item[len("--config."):].split("=", 1)
        overrides.append((key, value))
    return args, overrides


def build_config(name_or_path: str, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    config = config_lib.load_recipe(name_or_path)
    for key, value in overrides:
        config_lib.override(config, key, value)
    return config


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    with shows_progress("jaxcifar: "):
        return train_from_command_line(argv)


def train_from_command_line(argv: list[str] | None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = build_config(args.config, overrides)
        if args.coordinator or args.auto_distributed:
            parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        parallel.configure_compilation_cache()
        summary = fit(config, args.workdir, data_dir=args.data_dir, init_from=args.init_from,
                      overwrite=args.overwrite)
    except StopRequested as e:
        log.info("%s", e)
        return e.exit_status
    except NonFiniteLoss as e:  # the run diverged: not a bug, so reported like a user error
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    if jax.process_index() == 0:
        print(finished_line(summary, args.workdir))
    return 0
