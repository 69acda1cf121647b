"""Train-step throughput of jaxcifar vs PyTorch and Keras on this machine (``make bench``).

For every network (simple_cnn @256, resnet18 @128, and ``fast`` = airbench @512 when
jaxcifar has it) this times, side by side in one run, a full SGD-momentum float32
train step (forward, backward, update) in:
  * jaxcifar's own ``make_train_step``: with its on-device crop+flip (``+aug``) and
    without (``bare``, like-for-like with the twins, which get ready float32 batches;
    device splits are timed bare only); on 1 device and on the host split into N
    virtual devices, each with XLA's default
    flags and with TUNED_FLAGS (Eigen instead of YNNPACK convolutions, the recommended
    CPU setup from benchmarks/NOTES.md; split into TUNED_DEVICES[net] devices);
  * PyTorch CPU (default and channels_last memory format, 2 threads);
  * Keras 3 on TensorFlow (its CPU default, no XLA; and XLA for simple_cnn).
and the input pipeline alone (TFDS -> tf.data -> device). Every configuration is a
worker process; all of one network are interleaved repetition by repetition (see
harness.py), and the table reports medians.

    .venv/bin/python benchmarks/run.py                 # everything (~13 min; other load stretches it)
    .venv/bin/python benchmarks/run.py --quick         # simple_cnn + pipeline, short reps
    .venv/bin/python benchmarks/run.py --nets resnet18 --frameworks jax,torch --reps 3

Writes benchmarks/results/<date>-<host>.json and benchmarks/results/latest.md
(``--quick`` runs write ``-quick`` files and leave latest.md alone;
``--render results/<date>-<host>.json`` rewrites latest.md from a saved run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import Result, Spec, log_dir, machine_info, run_group

RESULTS = Path(__file__).with_name("results")
# Table name -> (jaxcifar model name, batch size).
NETS = {"simple_cnn": ("simple_cnn", 256), "resnet18": ("resnet18", 128), "fast": ("airbench", 512)}
# Default repetitions: a ResNet-18 or airbench step takes seconds, so fewer keep `make bench` < 15 min.
REPS = {"simple_cnn": 5, "resnet18": 2, "fast": 2}
FRAMEWORKS = ("jax", "torch", "keras", "pipeline")
# The recommended CPU setup (benchmarks/NOTES.md): Eigen instead of YNNPACK convolutions;
# and, opt-in, the host split into the number of virtual devices that measured best.
TUNED_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
TUNED_DEVICES = {"simple_cnn": 4, "resnet18": 2, "fast": 2}
PIPELINE_BATCH = 256


def available_nets() -> list[str]:
    """Table names of the networks jaxcifar has (``fast`` needs ``airbench``)."""
    from jaxcifar.models import MODEL_NAMES

    return [name for name, (model, _) in NETS.items() if model in MODEL_NAMES]


def jax_specs(net: str, devices: int) -> list[Spec]:
    """XLA's default flags and Eigen convolutions (jaxcifar's default), each on 1 device with
    and without augmentation, and split over devices (bare only: the split does not change
    what augmentation costs; the Eigen split is opt-in, see NOTES.md on rendezvous aborts)."""
    model, batch = NETS[net]
    split = TUNED_DEVICES[net]
    settings = [(1, (), "1 dev", (True, False)), (devices, (), f"{devices} dev", (False,)),
                (1, TUNED_FLAGS, "Eigen conv, 1 dev", (True, False)),
                (split, TUNED_FLAGS, f"Eigen conv, {split} dev", (False,))]
    return [Spec(f"jaxcifar {name}, {'+aug' if augment else 'bare'}", "jax", model, batch, n, flags,
                 {"augment": augment})
            for n, flags, name, augments in settings for augment in augments]


def torch_specs(net: str) -> list[Spec]:
    model, batch = NETS[net]
    return [Spec("pytorch", "torch", model, batch),
            Spec("pytorch channels_last", "torch", model, batch, options={"channels_last": True})]


def keras_specs(net: str) -> list[Spec]:
    """Keras' CPU default (no XLA); XLA too for the cheap net, to show XLA:CPU under TensorFlow."""
    model, batch = NETS[net]
    specs = [Spec("keras/tf", "keras", model, batch)]
    if net == "simple_cnn":
        specs.append(Spec("keras/tf jit_compile=True (XLA)", "keras", model, batch,
                          options={"jit_compile": True}))
    return specs


def net_specs(net: str, frameworks: list[str], devices: int) -> list[Spec]:
    builders = {"jax": lambda: jax_specs(net, devices), "torch": lambda: torch_specs(net),
                "keras": lambda: keras_specs(net)}
    return [spec for fw in frameworks if fw in builders for spec in builders[fw]()]


PEERS = ("torch", "keras")


def markdown(results: dict[str, list[dict]], machine: dict) -> str:
    """The latest.md report from the saved summaries (`Result.summary()`): machine, one table row
    per network x setting with its ratio to PyTorch's best row and to the fastest peer's, then
    the legend."""
    v = machine["versions"]
    lines = [
        "# Train-step throughput on this machine",
        "",
        (f"{machine['date']} on `{machine['host']}`: {machine['cpu']}, {machine['cores']} cores "
         f"(load average at start {machine['loadavg_at_start'][0]:.1f}); jax {v.get('jax')}, "
         f"flax {v.get('flax')}, torch {v.get('torch')}, "
         f"tensorflow {v.get('tensorflow', v.get('tensorflow-cpu'))}, keras {v.get('keras')}."),
        f"Command: `{machine['command']}`",
        "",
        "| network (batch) | framework / setting | img/s median | min–max | vs PyTorch best | vs fastest peer | compile s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def best(rows: list[dict], frameworks: tuple[str, ...]) -> float:
        return max((r["median"] or 0 for r in rows if r["framework"] in frameworks), default=0)

    def ratio(s: dict, reference: float) -> str:
        return f"{s['median'] / reference:.2f}x" if reference and s["framework"] != "pipeline" else ""

    for net, rows in results.items():
        torch_best, peer_best = best(rows, ("torch",)), best(rows, PEERS)
        for s in rows:
            batch = f"{net} ({s['batch']})"
            if s["median"] is None:
                lines.append(f"| {batch} | {s['label']} | failed | | | | |")
                continue
            label = s["label"] + (f" (aborted after {len(s['images_per_s'])} reps)" if s["error"] else "")
            compile_s = "" if s["compile_s"] is None else f"{s['compile_s']:.1f}"
            lines.append(f"| {batch} | {label} | {s['median']:,.0f} | {s['min']:,.0f}–{s['max']:,.0f} "
                         f"| {ratio(s, torch_best)} | {ratio(s, peer_best)} | {compile_s} |")
    lines += [
        "",
        ("- `+aug`: jaxcifar's step with its on-device pad-4 crop + flip; `bare`: only the uint8 -> float "
         "normalisation, like-for-like with PyTorch/Keras, which are fed ready float32 batches."),
        (f"- `N dev`: `XLA_FLAGS=--xla_force_host_platform_device_count=N`, batch sharded over an N-device "
         f"mesh (`parallel.make_mesh`). `Eigen conv`: `{' '.join(TUNED_FLAGS)}` (YNNPACK convolutions "
         "off, XLA's Eigen ones on; what `import jaxcifar` sets by default, jaxcifar/xla_cpu.py), alone and "
         "with the best measured device split; see benchmarks/NOTES.md. Rows without it: XLA's own defaults."),
        "- Repetitions (interleaved across all rows of a network): " + ", ".join(
            f"{net} {max(len(r['images_per_s']) for r in rows)}" for net, rows in results.items()) + ".",
        ("- compile s: jaxcifar's `jit(...).lower().compile()`; for Keras the first `train_on_batch` "
         "(tracing and one step). PyTorch is eager."),
        "- Optimizer everywhere: SGD, momentum 0.9, weight decay 5e-4, constant learning rate; float32.",
        "- `input pipeline`: `batch_order.train_batches` + `parallel.to_global`, images/s with no training.",
        "- `vs fastest peer`: against the best PyTorch or Keras row of that network.",
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", help=f"comma-separated, from {','.join(NETS)} (default: all jaxcifar has; "
                                       "--quick: simple_cnn)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--devices", type=int, default=2, help="virtual host devices for the N-dev rows")
    parser.add_argument("--reps", type=int,
                        help="timed repetitions per configuration (default: simple_cnn 5, others 3; quick 2)")
    parser.add_argument("--rep-seconds", type=float,
                        help="target length of one repetition (default 2, quick 1); at least one step")
    parser.add_argument("--quick", action="store_true", help="short run for development")
    parser.add_argument("--render", metavar="JSON",
                        help="run nothing; rewrite latest.md from a saved results/<date>-<host>.json")
    args = parser.parse_args()
    if args.quick:
        args.reps = args.reps or 2
    args.rep_seconds = args.rep_seconds or (1.0 if args.quick else 2.0)
    return args


def main() -> None:
    args = parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        (RESULTS / "latest.md").write_text(markdown(saved["results"], saved["machine"]))
        print(f"rendered {args.render} into {RESULTS / 'latest.md'}")
        return
    machine = machine_info()
    frameworks = args.frameworks.split(",")
    nets = args.nets.split(",") if args.nets else (["simple_cnn"] if args.quick else available_nets())
    unknown = set(nets) - set(available_nets())
    if unknown:
        raise SystemExit(f"unknown or unavailable nets {sorted(unknown)}; available: {available_nets()}")
    logs = log_dir()
    print(f"worker logs: {logs}")
    start = time.perf_counter()
    results: dict[str, list[Result]] = {}
    for net in nets:
        specs = net_specs(net, frameworks, args.devices)
        reps = args.reps or REPS[net]
        print(f"{net}: {len(specs)} configurations x {reps} reps ({time.perf_counter() - start:.0f} s in)")
        results[net] = run_group(specs, reps, args.rep_seconds, logs)
    if "pipeline" in frameworks:
        print("input pipeline")
        spec = Spec("input pipeline (no training)", "pipeline", "-", PIPELINE_BATCH)
        results["input"] = run_group([spec], args.reps or 3, args.rep_seconds, logs)
    machine["wall_s"] = round(time.perf_counter() - start)

    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    stem = f"{time.strftime('%Y-%m-%d')}-{machine['host']}{suffix}"
    summaries = {net: [r.summary() for r in rows] for net, rows in results.items()}
    payload = {"machine": machine, "args": vars(args), "results": summaries}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    report = markdown(summaries, machine)
    (RESULTS / f"latest{suffix}.md").write_text(report)
    print("\n" + report)
    print(f"wrote {RESULTS / (stem + '.json')} and {RESULTS / f'latest{suffix}.md'} in {machine['wall_s']} s")


if __name__ == "__main__":
    main()
