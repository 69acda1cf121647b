"""Why LiteRT int8 is not faster than LiteRT float32 on this project's CPU: simple_cnn's
three convolutions (3x3, VALID, ReLU), and a 64 -> 64 one at 32x32, each alone as a
`.tflite` model in float32 and in full-integer int8 (int8 in and out), run by
`ai-edge-litert` (XNNPACK, 1 thread) at batch 16, in turns in one process.

    .venv/bin/python benchmarks/litert_conv.py      # writes benchmarks/results/litert_conv.json

Each model is invoked `--repeats` times in round robin, 5 calls per timing; the median is
reported with the int8/float32 time ratio. Random weights: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from harness import machine_info

from jaxcifar.tf_extra import import_tf

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = 16
# name: (input (h, w, c), output channels)
CONVS = {"conv1 32x32x3 -> 32": ((32, 32, 3), 32), "conv2 15x15x32 -> 64": ((15, 15, 32), 64),
         "conv3 6x6x64 -> 128": ((6, 6, 64), 128), "64 -> 64 at 32x32": ((32, 32, 64), 64)}


def conv_model(tf, shape: tuple[int, int, int], channels: int, int8: bool, rng: np.random.Generator) -> bytes:
    kernel = tf.constant(rng.normal(0, 0.1, (3, 3, shape[-1], channels)).astype(np.float32))
    conv = tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID")),
                       input_signature=[tf.TensorSpec((BATCH, *shape), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv)
    if int8:
        calibration = rng.normal(0, 1, (4 * BATCH, *shape)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i:i + BATCH]] for i in range(0, 4 * BATCH, BATCH))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def int8_cpu_features() -> list[str]:
    """The CPU's vector features that int8 kernels can use (no *vnni: int8 products widen to int16)."""
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    return sorted(f for f in flags if f.startswith(("avx2", "avx512", "avx_vnni", "amx")) or "vnni" in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "litert_conv.json"))
    args = parser.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    tf = import_tf("LiteRT conversion")
    rng = np.random.default_rng(0)
    calls = {}
    for name, (shape, channels) in CONVS.items():
        for dtype in ("float32", "int8"):
            interpreter = Interpreter(model_content=conv_model(tf, shape, channels, dtype == "int8", rng),
                                      num_threads=1)
            interpreter.allocate_tensors()
            index = interpreter.get_input_details()[0]["index"]
            interpreter.set_tensor(index, np.zeros((BATCH, *shape), np.dtype(dtype)))
            calls[name, dtype] = interpreter.invoke
    seconds = {key: [] for key in calls}
    for call in calls.values():
        call()
    for _ in range(args.repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            for _ in range(5):
                call()
            seconds[key].append((time.perf_counter() - start) / 5)
    rows = {name: {dtype: float(np.median(seconds[name, dtype])) for dtype in ("float32", "int8")} for name in CONVS}
    for name, row in rows.items():
        row["int8_over_float32"] = row["int8"] / row["float32"]
        print(f"{name}: float32 {row['float32'] * 1e3:.3f} ms, int8 {row['int8'] * 1e3:.3f} ms "
              f"({row['int8_over_float32']:.2f}x the time)")
    pathlib.Path(args.out).write_text(json.dumps({"machine": machine_info(), "cpu_features": int8_cpu_features(), "batch": BATCH, "threads": 1,
                                                  "repeats": args.repeats, "median_seconds": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
