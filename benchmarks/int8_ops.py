"""Why the int8 export runs slower than float32 on XLA:CPU, op by op: simple_cnn's three
convolutions at batch 256 (the shapes of its int8 artefact, VALID padding) in float32 and in
int8 (`s8 x s8 -> s32`, as Qwix's static int8 graph computes them), a 1024^3 matmul, and the
two whole artefacts of `python -m jaxcifar.quantize` (`--quantized`, default
runs/compress/simple_cnn_int8), all timed in turns in one process.

    .venv/bin/python benchmarks/int8_ops.py       # writes benchmarks/results/int8_ops.json

Each op is jitted once per dtype and timed `--repeats` times in round robin; the median is
reported with its throughput in G multiply-adds per second, and the int8/float32 time ratio.
The whole-model rows show the gap; `--profile` then traces each artefact (jax.profiler) and
sums the time of each XLA:CPU thunk per call, which shows where the gap is: whether each
convolution runs as a YNNPACK fusion (`ynn_fusion*`, XLA:CPU's fast path) or as XLA's
generic `convolution` thunk.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import statistics
import sys
import time

from harness import machine_info

REPO = pathlib.Path(__file__).resolve().parents[1]

CONVS = {"conv1 3x3, 256x32x32x3 -> 32": (256, 32, 32, 3, 32), "conv2 3x3, 256x15x15x32 -> 64": (256, 15, 15, 32, 64),
         "conv3 3x3, 256x6x6x64 -> 128": (256, 6, 6, 64, 128)}
MATMUL = 1024
BATCH = 256


def artefacts(quantized: pathlib.Path, rng):
    """'whole simple_cnn' -> (None, {dtype: (the artefact's jitted call, a uint8 batch)})."""
    import jax
    import numpy as np

    from jaxcifar import export

    images = [rng.integers(0, 256, (BATCH, 32, 32, 3)).astype(np.uint8)]
    return {"whole simple_cnn, batch 256": (None, {dtype: (jax.jit(export.load_exported(quantized / folder)), images)
                                                   for dtype, folder in (("float32", "float32"), ("int8", "int8"))})}


def ops(rng):
    """name -> (multiply-adds, {dtype: (jitted fn, args)})."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def conv(x, w, out):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            preferred_element_type=out)

    def matmul(a, b, out):
        return jnp.matmul(a, b, preferred_element_type=out)

    def both(fn, shapes, macs):
        variants = {}
        for name, dtype, out in (("float32", np.float32, jnp.float32), ("int8", np.int8, jnp.int32)):
            args = [jnp.asarray(rng.integers(-127, 128, shape).astype(dtype)) for shape in shapes]
            variants[name] = (jax.jit(lambda *a, out=out: fn(*a, out)), args)
        return macs, variants

    table = {name: both(conv, [(n, h, w, cin), (3, 3, cin, cout)], n * h * w * cin * cout * 9)
             for name, (n, h, w, cin, cout) in CONVS.items()}
    table[f"matmul {MATMUL}^3"] = both(matmul, [(MATMUL, MATMUL), (MATMUL, MATMUL)], MATMUL**3)
    return table


def thunk_milliseconds(fn, args, logdir: pathlib.Path, calls: int = 3) -> dict[str, float]:
    """Milliseconds per call of each XLA:CPU thunk of `fn(*args)` under jax.profiler, the
    largest first (Python-side and waiting events left out)."""
    import jax

    jax.block_until_ready(fn(*args))
    with jax.profiler.trace(str(logdir)):
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
    trace = next(logdir.rglob("*.trace.json.gz"))
    totals = collections.Counter()
    for event in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith("$") and "::" not in name and " " not in name:
            totals[name] += event.get("dur", 0) / calls / 1e3
    return {name: round(ms, 2) for name, ms in totals.most_common() if ms >= 0.05}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quantized", default=str(REPO / "runs" / "compress" / "simple_cnn_int8"),
                        help="a `python -m jaxcifar.quantize` --out of simple_cnn (skipped if absent)")
    parser.add_argument("--profile", action="store_true", help="also trace the two artefacts thunk by thunk")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8_ops.json"))
    args = parser.parse_args(argv)
    import jax
    import numpy as np


    rng = np.random.default_rng(0)
    quantized = pathlib.Path(args.quantized)
    profiles = {}
    if args.profile and (quantized / "int8").is_dir():  # first, as a server's fresh process compiles them
        import tempfile

        (_, variants), = artefacts(quantized, rng).values()
        with tempfile.TemporaryDirectory() as logdir:
            for dtype, (fn, fn_args) in variants.items():
                profiles[dtype] = thunk_milliseconds(fn, fn_args, pathlib.Path(logdir) / dtype)
                print(f"{dtype} artefact, ms per batch of {BATCH} by thunk: {profiles[dtype]}")
    table = ops(rng)
    if (quantized / "int8").is_dir():
        table.update(artefacts(quantized, rng))
    for _, variants in table.values():  # compile and warm up
        for fn, fn_args in variants.values():
            jax.block_until_ready(fn(*fn_args))
    seconds = {(name, dtype): [] for name, (_, variants) in table.items() for dtype in variants}
    for _ in range(args.repeats):
        for name, (_, variants) in table.items():
            for dtype, (fn, fn_args) in variants.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(*fn_args))
                seconds[(name, dtype)].append(time.perf_counter() - start)
    rows = {}
    for name, (macs, variants) in table.items():
        median = {dtype: statistics.median(seconds[(name, dtype)]) for dtype in variants}
        rows[name] = {**{f"{dtype}_ms": round(1e3 * t, 2) for dtype, t in median.items()},
                      **({f"{dtype}_gmacs": round(macs / t / 1e9, 2) for dtype, t in median.items()} if macs else {}),
                      "int8_over_float32_time": round(median["int8"] / median["float32"], 2)}
        print(f"{name:32s} float32 {rows[name]['float32_ms']:8.2f} ms   int8 {rows[name]['int8_ms']:8.2f} ms   "
              f"{rows[name]['int8_over_float32_time']:.1f}x the time")
    result = {"command": "python benchmarks/int8_ops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
              "repeats": args.repeats, "quantized": str(quantized), "ops": rows,
              "thunk_ms_per_batch": profiles}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
