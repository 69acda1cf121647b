"""Export a trained run for serving: `python -m jaxcifar.export --workdir W --out DIR`.

    python -m jaxcifar.export --workdir runs/cnn --out exported/cnn [--format stablehlo|savedmodel|both]

Both artefacts compute the same function, `uint8 images (b, S, S, 3) NHWC RGB -> float32
logits (b, num_classes)`, for any batch size b, where S is the run's `data.image_size` (32
for the CIFAR recipes): the normalisation the run trained with (and flip TTA when asked for)
and the weights are baked in, so a client sends raw pixels and needs neither jaxcifar nor
the checkpoint. Images of other sizes must be resized to SxS first (as `jaxcifar.predict`
does, with Pillow's bilinear filter).

* `DIR/model.stablehlo`: a serialized `jax.export.Exported` (StableHLO, batch dimension
  symbolic). Running it needs only `jax`:
  `jax.export.deserialize(bytearray(open(f, "rb").read())).call(images)`, which
  `load_exported(DIR)` wraps, refusing other input shapes and dtypes with a clear error
  (integer arrays within 0..255 are accepted; floats are not, their scale being ambiguous).
  It is lowered for cpu, cuda and tpu by default, so one file runs on any of them, with JAX
  versions inside jax.export's compatibility window.
* `DIR/saved_model/`: a TensorFlow SavedModel made with `jax2tf` (native serialization: the
  same StableHLO inside one XlaCallModule op). Its `serving_default` signature takes
  `images` (uint8, [None, S, S, 3]) and returns `logits` and `probabilities`, which is
  what TF Serving exposes. Loading it needs a TensorFlow at least as new as the one that
  wrote it (it is checked here with `tf.saved_model.load`, not with a TF Serving binary).
* `DIR/serving.json`: class names in logit order, input and output specs, provenance.

If TensorFlow (and so jax2tf) cannot be imported, `--format savedmodel` fails with the
reason, and `--format both` still writes the StableHLO artefact, says clearly that the
SavedModel was skipped, and exits with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax.typing import ArrayLike

from jaxcifar import litert
from jaxcifar.runs import Run, uint8_pixels

STABLEHLO_FILE = "model.stablehlo"
SAVED_MODEL_DIR = "saved_model"
SERVING_FILE = "serving.json"
PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's built-in platforms
PROBE_TIMEOUT_S = 300  # a first call compiles (StableHLO) or builds the kernels (LiteRT) first
_PROBED: dict[tuple[str, str], str | None] = {}  # (suffix, sha256 of a model file): probe's answer


def image_shape(run: Run) -> tuple[int, int, int]:
    """One input image: (S, S, 3) RGB with S the run's image size."""
    return (run.image_size, run.image_size, 3)


def poly_shape(run: Run) -> str:
    """The input's shape for jax.export and jax2tf; b: any batch size."""
    return "b, {}, {}, {}".format(*image_shape(run))


def export_stablehlo(run: Run, tta: bool = False, platforms: tuple[str, ...] = PLATFORMS) -> jax_export.Exported:
    """The run's `uint8 -> logits` function lowered to StableHLO with a symbolic batch size."""
    spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(poly_shape(run)), jnp.uint8)
    return jax_export.export(jax.jit(run.serving_fn(tta)), platforms=platforms)(spec)


def load_exported(path: str | pathlib.Path, num_threads: int = litert.NUM_THREADS) -> Callable[[np.ndarray], ArrayLike]:
    """`images -> logits` from an exported model: a `model.stablehlo` file (jax.export) or a
    `model.tflite` file (LiteRT, written by `jaxcifar.quantize`), or the directory holding one.

    The images must have the artefact's input shape, (b, S, S, 3) NHWC RGB for any b >= 1,
    and be uint8, or an integer array whose values all lie in 0..255 (converted exactly).
    Anything else raises a ValueError saying how to fix it. Floats in particular are refused
    rather than cast: [0, 1] floats cast to uint8 are all zeros, so every image would
    silently get the class of a black one. `num_threads` is the LiteRT interpreter's; XLA
    picks its own. An artefact that fails `probe` is refused with a ValueError saying why."""
    path = artefact_file(pathlib.Path(path))
    failure = probe(path)
    if failure:
        raise ValueError(f"{path} cannot be run: {failure}. Nothing was loaded; write the artefact again "
                         "(python -m jaxcifar.export or jaxcifar.quantize).")
    compute, shape, _ = open_model(path, num_threads)

    def call(images: np.ndarray) -> ArrayLike:
        images = images if isinstance(images, jax.Array) else np.asarray(images)  # a jax.Array stays put
        _check_shape(images.shape, shape)
        return compute(uint8_pixels(images))

    return call


OpenedModel = tuple[Callable[[np.ndarray], ArrayLike], tuple, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class ArtefactFormat:
    """One kind of exported model file: how `load_exported`, `probe` and `serve` open it. A new
    format is one entry in FORMATS."""

    file: str  # the model file's name in an export folder; a file is recognised by its suffix
    platform: str  # its name in the serving metadata (the KServe `platform` field)
    open: Callable[[pathlib.Path, int], OpenedModel]  # (file, threads) -> open_model's triple
    device: Callable[[], str]  # where its logits are computed


def _open_stablehlo(path: pathlib.Path, num_threads: int) -> OpenedModel:
    """A StableHLO model takes any batch size; it is proven at the LiteRT models' sizes, so
    that every artefact is proven alike. XLA picks its own thread count."""
    del num_threads
    exported = jax_export.deserialize(bytearray(path.read_bytes()))
    return jax.jit(exported.call), exported.in_avals[0].shape, litert.BATCH_SIZES  # compiled once per batch size


FORMATS = (ArtefactFormat(STABLEHLO_FILE, "jax_stablehlo", _open_stablehlo, jax.default_backend),
           # LiteRT runs on the CPU whatever JAX's default device is.
           ArtefactFormat(litert.MODEL_FILE, "litert_tflite", litert.load, lambda: "cpu"))


def artefact_format(file: pathlib.Path) -> ArtefactFormat:
    """The format of a model file, by its suffix."""
    for fmt in FORMATS:
        if file.suffix == pathlib.Path(fmt.file).suffix:
            return fmt
    raise ValueError(f"{file} is not an exported model: expected one of {', '.join(f.file for f in FORMATS)}.")


def open_model(path: pathlib.Path, num_threads: int = litert.NUM_THREADS) -> OpenedModel:
    """(uint8 images -> logits, input shape with a symbolic batch, batch sizes to prove it
    at) of a model file, unchecked."""
    return artefact_format(path).open(path, num_threads)


def probe(path: str | pathlib.Path, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the artefact at `path` (a model file or its directory) loads and gives
    finite logits for a batch of 1 and one of its largest batch size in a child process;
    else why not: the signal that ended the child, its error line, or its silence. A model
    can abort the interpreter that runs it (litert.py's "GELU as one op" tells of one), and
    then it ends only the child. Remembered per model file content, so each is run once per
    process."""
    file = artefact_file(pathlib.Path(path))
    key = (file.suffix, hashlib.sha256(file.read_bytes()).hexdigest())
    if key not in _PROBED:
        _PROBED[key] = _probe_in_child(file, timeout_s)
    return _PROBED[key]


def _probe_in_child(file: pathlib.Path, timeout_s: float) -> str | None:
    # The child imports this very package, wherever the parent found it.
    package_root = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = "import sys; from jaxcifar.export import prove_here; prove_here(sys.argv[1])"
    try:
        child = subprocess.run([sys.executable, "-c", code, str(file)], capture_output=True, text=True, env=env,
                               timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"running it did not finish within {timeout_s:.0f} s"
    if child.returncode == 0:
        return None
    if child.returncode < 0:
        return f"running it killed the process with {signal.Signals(-child.returncode).name}"
    last_line = next((line for line in reversed(child.stderr.splitlines()) if line.strip()), "")
    return f"running it failed with {last_line or f'exit status {child.returncode}'}"


def prove_here(path: str) -> None:
    """The child's side of `probe`: raises unless the model gives finite (n, classes) logits
    for n = 1 and n = its largest batch size."""
    compute, shape, sizes = open_model(pathlib.Path(path))
    for n in (1, max(sizes)):
        images = np.random.default_rng(0).integers(0, 256, (n, *shape[1:]), dtype=np.uint8)
        logits = np.asarray(compute(images))
        if logits.ndim != 2 or len(logits) != n or not np.isfinite(logits).all():
            raise ValueError(f"a batch of {n} gave logits of shape {logits.shape}, "
                             f"{'all' if np.isfinite(logits).all() else 'not all'} finite")


def artefact_file(path: pathlib.Path) -> pathlib.Path:
    """The model file at `path`: the file itself, or the one model file of a directory."""
    found = [path / fmt.file for fmt in FORMATS] if path.is_dir() else [path]
    found = [f for f in found if f.is_file()]
    if not found:
        raise FileNotFoundError(f"No exported model at {path}; write one with `python -m jaxcifar.export` "
                                "(or a LiteRT one with `python -m jaxcifar.quantize`).")
    if len(found) > 1:
        raise ValueError(f"{path} holds {' and '.join(f.name for f in found)}; pass the file to load.")
    return found[0]


def _check_shape(shape: tuple[int, ...], expected: tuple) -> None:
    """Refuse a shape other than `expected`, whose symbolic dimensions (the batch) take any size >= 1."""
    fits = len(shape) == len(expected) and all(
        size == want if isinstance(want, int) else size >= 1 for size, want in zip(shape, expected))
    if not fits:
        raise ValueError(
            f"The exported model takes images of shape ({', '.join(map(str, expected))}), NHWC RGB with any "
            f"batch size b >= 1; got shape {tuple(shape)}. Add a batch axis to a single image (images[None]), "
            "transpose NCHW to NHWC (images.transpose(0, 2, 3, 1)) and resize other sizes to "
            f"{expected[1]}x{expected[2]} first (jaxcifar.image_files.read_image does).")


def save_saved_model(run: Run, directory: pathlib.Path, tta: bool = False,
                     platforms: tuple[str, ...] = PLATFORMS) -> None:
    """A TF SavedModel with a batch-polymorphic `serving_default` signature. The weights
    are constants inside the embedded StableHLO (fine far below the 2 GB protobuf limit;
    a ResNet-50 is 100 MB); raises ImportError where TensorFlow is not installed."""
    from jaxcifar.tf_extra import import_tf

    tf = import_tf("the SavedModel export", "export with --format stablehlo, which needs only JAX")
    from jax.experimental import jax2tf

    logits_tf = jax2tf.convert(run.serving_fn(tta), polymorphic_shapes=[poly_shape(run)],
                               with_gradient=False, native_serialization_platforms=platforms)

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape(run)], tf.uint8, name="images")],
                 autograph=False)
    def serve(images):
        logits = logits_tf(images)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, str(directory), signatures={"serving_default": serve})


def serving_metadata(run: Run, tta: bool, platforms: tuple[str, ...], formats: list[str]) -> dict:
    return {
        "class_names": list(run.class_names),
        "input": {"name": "images", "dtype": "uint8", "shape": ["b", *image_shape(run)], "layout": "NHWC",
                  "color": "RGB", "range": [0, 255],
                  "preprocessing": f"resize to {run.image_size}x{run.image_size} (jaxcifar.predict: Pillow "
                                   f"bilinear); normalisation ({run.config.augment.normalization}) is inside "
                                   "the model"},
        "output": {"logits": {"dtype": "float32", "shape": ["b", run.num_classes]},
                   "probabilities": "softmax of logits (SavedModel signature only)"},
        "formats": formats,
        "platforms": list(platforms),
        "tta": tta,
        "model": run.config.model,
        "workdir": str(run.workdir),
        "checkpoint_step": run.step,
        "jax_version": jax.__version__,
    }


def export_run(run: Run, out: pathlib.Path, fmt: str = "both", tta: bool = False,
               platforms: tuple[str, ...] = PLATFORMS) -> tuple[list[str], str | None]:
    """Write the requested artefacts and serving.json to `out`; returns (formats written,
    why the SavedModel was skipped or None). Only `both` tolerates a missing TensorFlow."""
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], None
    if fmt in ("stablehlo", "both"):
        (out / STABLEHLO_FILE).write_bytes(export_stablehlo(run, tta, platforms).serialize())
        written.append("stablehlo")
    if fmt in ("savedmodel", "both"):
        try:
            save_saved_model(run, out / SAVED_MODEL_DIR, tta, platforms)
            written.append("savedmodel")
        except ImportError as e:  # TensorFlow or jax2tf: the message says what to install
            if fmt == "savedmodel":
                raise
            skipped = str(e)
    (out / SERVING_FILE).write_text(json.dumps(serving_metadata(run, tta, platforms, written), indent=2))
    return written, skipped


def parse_platforms(text: str) -> tuple[str, ...]:
    """--platforms value; checked here because jax.export lowers for unknown names without complaint."""
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if unknown or not platforms:
        raise argparse.ArgumentTypeError(f"platforms must be a comma-separated subset of {','.join(KNOWN_PLATFORMS)}; "
                                         f"got {text!r}")
    return platforms


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/export.py
    from jaxcifar.cli.export import main

    sys.exit(main())
