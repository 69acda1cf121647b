"""LiteRT (TFLite) artefacts of a run: its serving function in a `.tflite` model, float32 or
full-integer int8, run on a CPU by `ai-edge-litert`'s interpreter (XNNPACK kernels).

Why LiteRT: XLA:CPU has no fast int8 convolution (benchmarks/int8_ops.py), so the int8
StableHLO artefact is smaller but slower than float32. LiteRT has int8 kernels, and its
converter ships in the pinned TensorFlow, so the route is the run's own serving function
(`runs.Run.serving_fn`, the one inference path) -> jax2tf -> `tf.lite.TFLiteConverter`,
with no second implementation of the network. (ONNX Runtime was the alternative; jax2onnx
pins an older Orbax than this project.) `ai-edge-litert` is pinned; it is LiteRT's own
wheel, which `tf.lite.Interpreter` is deprecated in favour of.

Decisions, each for a measured reason:

* **Static batch sizes.** The batch-polymorphic SavedModel that `export` writes does not
  convert (`vhlo.dynamic_gather_v1 ... not part of the vhlo support yet`: the pooling's
  slice with a symbolic batch, models/layers.py), and a static model cannot be resized
  either (its reshapes carry the batch). So the function is converted once per size in
  BATCH_SIZES, each a signature (`batch_{b}`) of one model; the converter stores each
  weight once, so a signature costs only its tensor descriptions (about 12 KB with int8's
  per-channel scales, measured on simple_cnn). `load` runs n images as full pieces of the
  largest size, the rest one by one (`batch_pieces`). Sizes 1 and 16: in the sweep of
  experiments/litert_int8.py (simple_cnn, 256 images through models converted at (1, B),
  experiments/results/litert_int8.json, load ~11 on 2 cores), B = 4..64 ran 1.6-1.9x the
  images/s of B = 1 in float32 and 1.04-1.3x in int8, and B = 256 no better than 16-64; 1
  keeps a lone image's latency. The second size costs simple_cnn's int8 model 3.6x -> 3.2x
  smaller than the float32 StableHLO (110 -> 121 KiB), a fixed cost larger models dilute.
* **One interpreter thread by default** (`NUM_THREADS`): on this project's shared 2-core
  CPU, 2 threads took twice as long at batch 1 (0.52 against 0.27 ms for simple_cnn's int8
  model, experiments/results/litert_int8.json: a thread descheduled by other load stalls
  every op) and gained at most 1.2x at batch 256, and a server's HTTP work needs a core
  too. quantize times both; pass `num_threads` to `load` / `export.load_exported`.
* **Full-integer int8** (`TFLITE_BUILTINS_INT8`): int8 weights (per output channel) and
  int8 activations (per tensor, ranges calibrated on training images), int32 accumulation.
  simple_cnn and the ResNets convert to int8 from end to end (tests/test_quantize.py checks a
  ResNet-18) and airbench does with its GELU as one op (next item). An op the converter
  cannot quantize stays float32 between DEQUANTIZE and QUANTIZE, so `operators` is how to
  check a new model. The input stays uint8 and the logits float32, so the contract is that
  of every other artefact: uint8 images in, float32 logits out; normalisation (inside the
  model) becomes int8 arithmetic after one quantize.
* **GELU as one op** (`models.layers.tanh_gelu_traced`, `exact_gelu`). Traced as it is,
  airbench's exact GELU reaches the converter as erf's polynomials, dozens of elementwise
  ops that evaluate both of erf's branches on every value and select one. Quantized op by
  op, the unused branch (a polynomial in 1/x^2 near x = 0) calibrates to ranges up to 1e36,
  and an int8 ADD whose inputs' scales differ by a factor of ~1e39 gets a rescale factor
  that underflows to 0: `tflite::QuantizeMultiplierSmallerThanOneExp` CHECK-fails in ADD's
  Prepare on the first call (tensor allocation) and aborts the process (SIGABRT), with or
  without XNNPACK. The converter makes TFLite's GELU op (a lookup table in int8) only of
  the tanh form, so `convert` traces the network with its GELU in tanh form, then sets
  every GELU op to exact (`approximate = False`): the LiteRT model computes the exact GELU
  the network trained with, and only calibration saw the tanh form, at most 4.7e-4 away
  (max |tanh GELU - exact GELU|, at x = 2.7). Measured on a tiny airbench (widths (8, 16,
  16)): the float32 LiteRT logits are within 6e-7 of the run's largest |logit| (7.7e-4 with
  the tanh form left in); tests/test_litert.py bounds both models against the run's logits.
* **Every signature is calibrated on the same images** (`calibration_batches`), so all get
  the same activation ranges and one image the same logits in a batch of any size.
"""

from __future__ import annotations

import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from jaxcifar.models.layers import tanh_gelu_traced

MODEL_FILE = "model.tflite"
SIGNATURE_PREFIX = "batch_"
BATCH_SIZES = (1, 16)
NUM_THREADS = 1
OUTPUT = "logits"


def signature_key(batch_size: int) -> str:
    return f"{SIGNATURE_PREFIX}{batch_size}"


def batch_pieces(n: int, sizes: tuple[int, ...]) -> list[int]:
    """n as a sum of `sizes` (which hold 1), largest first: 130 with (1, 64) is 64 + 64 + 1 + 1."""
    pieces = []
    for size in sorted(sizes, reverse=True):
        count, n = divmod(n, size)
        pieces += [size] * count
    return pieces


def calibration_batches(images: np.ndarray, batch_sizes: tuple[int, ...]) -> Iterator[tuple[str, dict]]:
    """The converter's representative dataset: for each signature, every image once, in
    batches of its size (the last one filled up from the start: a repeated image leaves the
    min/max ranges as they were)."""
    for size in batch_sizes:
        for start in range(0, len(images), size):
            yield signature_key(size), {"images": images[np.arange(start, start + size) % len(images)]}


def convert(serving_fn: Callable, image_shape: tuple[int, int, int], batch_sizes: tuple[int, ...] = BATCH_SIZES,
            calibration: np.ndarray | None = None) -> bytes:
    """The `.tflite` bytes of `serving_fn` (uint8 (b, *image_shape) -> float32 logits) at each
    static batch size: float32, or full-integer int8 calibrated on `calibration` (uint8
    images of `image_shape`) when given. `batch_sizes` must hold 1, so that any n can be run."""
    if 1 not in batch_sizes:
        raise ValueError(f"batch_sizes={batch_sizes} must include 1: `load` runs what is left over one by one.")
    from jaxcifar.tf_extra import import_tf

    tf = import_tf("LiteRT conversion")  # before jax2tf, which imports TensorFlow itself
    from jax.experimental import jax2tf

    logits = jax2tf.convert(serving_fn, with_gradient=False, native_serialization_platforms=("cpu",))
    with tanh_gelu_traced(), tempfile.TemporaryDirectory() as saved_model, warnings.catch_warnings():
        # GELU: see "GELU as one op" above. The warning: the converter calibrates with
        # tf.lite.Interpreter, deprecated, inside TensorFlow; this module uses ai-edge-litert's.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        signatures = {signature_key(b): tf.function(lambda images: {OUTPUT: logits(images)}, autograph=False,
                                                    input_signature=[tf.TensorSpec([b, *image_shape], tf.uint8,
                                                                                   name="images")]
                                                    ).get_concrete_function() for b in batch_sizes}
        # Through a SavedModel because that is how the converter takes several named signatures.
        tf.saved_model.save(tf.Module(), saved_model, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=list(signatures))
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: calibration_batches(calibration, batch_sizes)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return exact_gelu(converter.convert())


def exact_gelu(model: bytes) -> bytes:
    """`model` with every GELU op computing the exact GELU (erf), not its tanh form: the
    network's own activation, which `convert` traced in tanh form only so that the converter
    would make one GELU op of it. Every GELU of this project's networks is the exact one
    (models/layers.gelu), so every GELU op is switched. The flag's byte is cleared in place:
    rewriting the whole model through the schema's object API would drop what that schema
    does not know of the converter's output."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = bytearray(model)
    flat = schema.Model.GetRootAs(buffer)
    gelu_codes = {i for i in range(flat.OperatorCodesLength())
                  if max(flat.OperatorCodes(i).BuiltinCode(), flat.OperatorCodes(i).DeprecatedBuiltinCode())
                  == schema.BuiltinOperator.GELU}
    for graph in map(flat.Subgraphs, range(flat.SubgraphsLength())):
        for op in map(graph.Operators, range(graph.OperatorsLength())):
            if op.OpcodeIndex() in gelu_codes:
                options = op.BuiltinOptions()
                field = options.Offset(4)  # GeluOptions.approximate; absent means False already
                if field:
                    buffer[options.Pos + field] = 0
    return bytes(buffer)


def operators(model: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """(op name, dtypes of its inputs) of every operator of the model's first signature,
    e.g. ('CONV_2D', ('INT8', 'INT8', 'INT32')): what the converter actually produced."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    op_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    graph = flat.subgraphs[0]
    return [(op_names[flatbuffer_utils.get_builtin_code_from_operator_code(flat.operatorCodes[op.opcodeIndex])],
             tuple(type_names[graph.tensors[i].type] for i in op.inputs if i >= 0)) for op in graph.operators]


def load(path: str | pathlib.Path, num_threads: int = NUM_THREADS
         ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...], tuple[int, ...]]:
    """(uint8 (n, S, S, 3) -> float32 logits for any n >= 1, the model's input shape with
    the batch as "b", its static batch sizes) of a `.tflite` file written by `convert`. The
    caller checks the images (export.load_exported does) and, since a model can abort the
    process on its first call, the model itself (export.probe). Not thread-safe: one
    interpreter, one call at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    runners = {int(key.removeprefix(SIGNATURE_PREFIX)): interpreter.get_signature_runner(key)
               for key in interpreter.get_signature_list()}
    sizes = tuple(runners)
    image_shape = tuple(int(d) for d in runners[min(sizes)].get_input_details()["images"]["shape"][1:])

    def logits(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        ends = np.cumsum([0, *batch_pieces(len(images), sizes)])
        return np.concatenate([runners[stop - start](images=images[start:stop])[OUTPUT]
                               for start, stop in zip(ends[:-1], ends[1:])])

    return logits, ("b", *image_shape), sizes
