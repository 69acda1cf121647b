"""Open a trained run directory for inference: `load_run(workdir) -> Run`.

The evaluate, predict and export CLIs all need the same four things from a workdir (the
config it was trained with, its model, one checkpoint's weights, and the class names, which
the training loop recorded in classes.json), and they must all turn uint8 pixels into logits
exactly as the training loop's evaluation does.
Keeping that in one place means a change to normalisation or the checkpoint layout cannot
make the three tools disagree with each other or with `summary.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxcifar import checkpoint, methods, peft, steps
from jaxcifar import config as config_lib
from jaxcifar.workdir import METHOD_MODULE, read_class_names

@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """One checkpoint of a trained run, ready for inference (compared by identity: it holds arrays)."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict[str, Any]  # {'params', 'batch_stats'} on the default device
    step: int
    class_names: tuple[str, ...]
    forward: steps.ForwardFn = dataclasses.field(init=False, repr=False)
    _jitted: Callable[..., jax.Array] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        forward = steps.make_forward(self.model, self.image_size, self.config.augment.normalization,
                                     self.config.tta_translate)
        object.__setattr__(self, "forward", forward)
        object.__setattr__(self, "_jitted", jax.jit(forward, static_argnames="tta"))

    @property
    def is_classifier(self) -> bool:
        """False for a self-supervised run: its network ends in a projector, not in logits.
        Its method's registry entry says (a semi-supervised method's network is a classifier)."""
        return methods.info(self.config.objective).classifier

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes (`data.image_size`); predict resizes files to it."""
        return self.config.data.image_size

    def resolve_tta(self, tta: bool | None) -> bool:
        """An explicit choice, else what the run itself evaluated with (`config.tta`), so that
        by default every tool reproduces the accuracy in summary.json."""
        return self.config.tta if tta is None else tta

    def logits(self, uint8_images: Any, tta: bool = False) -> jax.Array:
        """float32 logits (n, num_classes) of uint8 NHWC RGB images of the run's `image_size`
        (another size is resized on the device, as in training; see `uint8_pixels` for what
        else is accepted). Each new batch shape compiles once; callers with many batches
        should keep it fixed."""
        self.require_classifier()
        images = uint8_images if isinstance(uint8_images, jax.Array) else np.asarray(uint8_images)
        return self._jitted(self.variables, uint8_pixels(images), tta=tta)

    def serving_fn(self, tta: bool = False) -> Callable[[jax.Array], jax.Array]:
        """`images -> logits` with the weights closed over, so that exporting it bakes the
        weights and the normalisation into one self-contained module."""
        self.require_classifier()
        return functools.partial(self.forward, self.variables, tta=tta)


    def require_classifier(self) -> None:
        if not self.is_classifier:
            raise ValueError(
                f"{self.workdir} is a self-supervised ({self.config.objective}) run: it has no classifier to predict, "
                "export or serve with. Train one on its backbone with `python -m jaxcifar.train --config "
                f"ssl_finetune --init_from {self.workdir} ...`; `python -m jaxcifar.evaluate` reports its kNN and "
                "linear-probe accuracy.")


def uint8_pixels(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """The model input every inference path takes: uint8 pixels as they are; integer pixels
    within 0..255 converted (exactly); anything else refused. Floats are refused rather than
    cast because their scale is ambiguous: [0, 1] floats cast to uint8 are all zeros, and
    every image would silently get the class of a black one."""
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.integer):
        raise ValueError(
            f"The model takes uint8 pixels (0..255) or integers within 0..255; got {images.dtype}. "
            "Floats are refused, not cast, because their scale is ambiguous: convert [0, 1] images with "
            "(images * 255).round().astype(np.uint8), [0, 255] ones with images.round().astype(np.uint8).")
    low, high = int(images.min()), int(images.max())
    if low < 0 or high > 255:
        raise ValueError(f"The model takes pixels in 0..255; got {images.dtype} values from {low} to "
                         f"{high}. Rescale them to 0..255 and pass uint8.")
    return images.astype(np.uint8)


def read_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The run's full config from `config.json`, rebuilt through `config.recipe` so that
    JSON lists become the tuples the schema expects; the module of a method defined outside
    the package, recorded beside it, is imported first (so it registers itself)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a jaxcifar workdir "
                                "(pass the --workdir that training wrote to).")
    stored = json.loads(path.read_text())
    methods.import_recorded(stored.get("objective"), stored.pop(METHOD_MODULE, ""))
    try:
        return config_lib.recipe(stored)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} does not fit this version of jaxcifar's config schema: {e}") from None


def load_run(workdir: str | pathlib.Path, which: str | int = "best", precision: str | None = None) -> Run:
    """Open `workdir` at checkpoint `which` ('best', 'latest' or a step number). `workdir`
    may be a PEFT run's adapter directory, which is resolved against its base run (and
    holds one checkpoint). A LoRA run's adapters are merged into its kernels (`peft.merge_lora`),
    so every tool runs the plain network, at the plain network's speed. The network computes
    at the run's `precision` (its weights are float32 either way), or at `precision` if given:
    e.g. 'float32' to run a GPU's bfloat16 run exactly on a CPU."""
    workdir = pathlib.Path(workdir).absolute()
    config = read_config(workdir)
    if precision is not None:
        config.precision = precision
        config_lib.validate(config, 1)
    names = read_class_names(workdir)
    model = methods.create(config, len(names)).model
    if peft.is_adapter(workdir):
        variables, step = peft.load_adapter(workdir, _variable_shapes(model, config.data.image_size))
        if which not in ("best", step):
            raise ValueError(f"{workdir} is an adapter: it holds one checkpoint, step {step}, not {which!r}.")
    else:
        variables, step = checkpoint.load_variables(workdir, which)
    if config.peft.mode == "lora":
        variables = {**variables, "params": peft.merge_lora(variables["params"], peft.lora_of(config).scale)}
        without_lora = config.copy_and_resolve_references()
        without_lora.peft.mode = "full"
        model = methods.create(without_lora, len(names)).model
    return Run(workdir, config, model, jax.device_put(variables), int(step), names)


def _variable_shapes(model: nn.Module, image_size: int) -> dict:
    """The {'params', 'batch_stats'} shapes of `model`, without computing any weights."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def parse_checkpoint(text: str) -> str | int:
    """--checkpoint value: 'best', 'latest' or a step number."""
    if text in ("best", "latest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'best', 'latest' or a step number, got {text!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--workdir, --checkpoint and --tta, shared by every CLI that opens a trained run."""
    parser.add_argument("--workdir", required=True, help="run directory written by `python -m jaxcifar.train`")
    parser.add_argument("--checkpoint", type=parse_checkpoint, default="best",
                        help="'best' (the default): chosen on the run's validation split, or its final weights "
                             "if it held out none (as summary.json reports); 'latest'; or a step number")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average logits with the horizontally mirrored image (default: the run's config.tta)")
