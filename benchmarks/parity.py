"""CPU-parity study: jaxcifar's train step under XLA flag / device-split / dtype variants.

Each variant is one worker process (flags are read when jax is imported); all
variants of a run are interleaved repetition by repetition (see harness.py), so
they can be compared even on a busy machine. Findings go to benchmarks/NOTES.md.

    .venv/bin/python benchmarks/parity.py --net simple_cnn --variants base,no_ynn_conv,dev2
    .venv/bin/python benchmarks/parity.py --list
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import Spec, log_dir, machine_info, run_group

RESULTS = Path(__file__).with_name("results")
BATCH = {"simple_cnn": 256, "resnet18": 128, "airbench": 512}

NO_YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
NO_YNN_CONV_REDUCE = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce"
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="

# name -> (virtual devices, extra XLA flags, bench_jax options)
VARIANTS: dict[str, tuple[int, tuple[str, ...], dict]] = {
    "base": (1, (), {}),
    "dev2": (2, (), {}),
    "dev4": (4, (), {}),
    "dev8": (8, (), {}),
    "no_ynn_conv": (1, (NO_YNN_CONV,), {}),
    "no_ynn_conv_dev2": (2, (NO_YNN_CONV,), {}),
    "no_ynn_conv_dev4": (4, (NO_YNN_CONV,), {}),
    "no_ynn_conv_dev8": (8, (NO_YNN_CONV,), {}),
    "no_ynn": (1, (NO_YNN,), {}),
    "no_ynn_dev2": (2, (NO_YNN,), {}),
    "no_ynn_dev4": (4, (NO_YNN,), {}),
    "no_ynn_dev8": (8, (NO_YNN,), {}),
    "no_ynn_conv_reduce": (1, (NO_YNN_CONV_REDUCE,), {}),
    "no_ynn_conv_reduce_dev4": (4, (NO_YNN_CONV_REDUCE,), {}),
    "no_ynn_conv_dev2_memsched": (2, (NO_YNN_CONV, "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"), {}),
    "eigen_single_thread": (1, (NO_YNN_CONV, "--xla_cpu_multi_thread_eigen=false"), {}),
    "eigen_single_thread_dev2": (2, (NO_YNN_CONV, "--xla_cpu_multi_thread_eigen=false"), {}),
    "eigen_single_thread_dev4": (4, (NO_YNN_CONV, "--xla_cpu_multi_thread_eigen=false"), {}),
    "xnn_all": (1, ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",), {}),
    "xnn_graph_greedy": (1, ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",),
                         {}),
    "onednn_all": (1, ("--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",), {}),
    "use_onednn": (1, ("--xla_cpu_use_onednn=true",), {}),
    "use_onednn_no_ynn_conv": (1, (NO_YNN_CONV, "--xla_cpu_use_onednn=true"), {}),
    "onednn_custom_call_no_ynn_conv": (1, (NO_YNN_CONV, "--xla_cpu_use_onednn=true",
                                           "--xla_cpu_experimental_onednn_custom_call=true"), {}),
    "xnn_graph_greedy_no_ynn_conv": (
        1, (NO_YNN_CONV, "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"), {}),
    "fast_math": (1, (NO_YNN_CONV, "--xla_cpu_enable_fast_math=true"), {}),
    "precision_highest": (1, (), {"matmul_precision": "highest"}),
    "precision_bf16": (1, (), {"matmul_precision": "bfloat16"}),
    "pool_slices": (1, (NO_YNN_CONV,), {"pool": "slices"}),
    "pool_reduce_window": (1, (NO_YNN_CONV,), {"pool": "reduce_window"}),
    "pool_slices_dev2": (2, (NO_YNN_CONV,), {"pool": "slices"}),
    "wg": (1, (), {"conv": "batch_minor_wgrad"}),
    "wg_dev4": (4, (), {"conv": "batch_minor_wgrad"}),
    "wg_no_ynn_conv": (1, (NO_YNN_CONV,), {"conv": "batch_minor_wgrad"}),
    "wg_no_ynn_conv_dev2": (2, (NO_YNN_CONV,), {"conv": "batch_minor_wgrad"}),
    "wg_no_ynn_conv_dev4": (4, (NO_YNN_CONV,), {"conv": "batch_minor_wgrad"}),
    "wg_no_ynn_conv_dev8": (8, (NO_YNN_CONV,), {"conv": "batch_minor_wgrad"}),
    "bf16": (1, (), {"dtype": "bfloat16"}),
    "bf16_no_ynn_conv": (1, (NO_YNN_CONV,), {"dtype": "bfloat16"}),
    "bf16_no_ynn_conv_dev2": (2, (NO_YNN_CONV,), {"dtype": "bfloat16"}),
    "bf16_no_ynn_conv_dev4": (4, (NO_YNN_CONV,), {"dtype": "bfloat16"}),
}


def variant_spec(name: str, net: str, augment: bool) -> Spec:
    """``name`` is a VARIANTS key, optionally ``@BATCH`` to change the (global) batch size."""
    key, _, batch = name.partition("@")
    devices, flags, options = VARIANTS[key]
    return Spec(label=name, framework="jax", net=net, batch=int(batch or BATCH[net]), devices=devices,
                xla_flags=flags, options={"augment": augment, **options})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="simple_cnn", choices=sorted(BATCH))
    parser.add_argument("--variants", default="base,dev2,no_ynn_conv,no_ynn_conv_dev2")
    parser.add_argument("--augment", action="store_true", help="time the step with crop+flip")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rep-seconds", type=float, default=2.0)
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args()
    if args.list:
        for name, (devices, flags, options) in VARIANTS.items():
            print(f"{name:26s} devices={devices} flags={' '.join(flags) or '-'} options={options or '-'}")
        return
    specs = [variant_spec(v, args.net, args.augment) for v in args.variants.split(",")]
    print(f"{args.net}: {len(specs)} variants x {args.reps} reps")
    results = run_group(specs, args.reps, args.rep_seconds, log_dir())
    base = results[0].summary()["median"]
    print(f"\n{'variant':26s} {'median':>8s} {'min-max':>13s} {'vs first':>8s} {'img/cpu-s':>9s} "
          f"{'compile':>8s}")
    for result in results:
        s = result.summary()
        if s["median"] is None:
            print(f"{s['label']:26s} FAILED {s['error']}")
            continue
        print(f"{s['label']:26s} {s['median']:8.0f} {s['min']:6.0f}-{s['max']:<6.0f} "
              f"{s['median'] / base if base else float('nan'):8.2f} {s['cpu_median']:9.0f} "
              f"{s['compile_s']:8.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"parity-{time.strftime('%Y%m%d')}.jsonl"
    with out.open("a") as f:
        f.write(json.dumps({"machine": machine_info(), "net": args.net, "augment": args.augment,
                            "results": [r.summary() for r in results]}) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
