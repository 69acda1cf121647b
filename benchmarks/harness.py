"""Interleaved, side-by-side timing of benchmark configurations in worker subprocesses.

Why subprocesses: XLA flags (e.g. the number of virtual host devices) are read once,
when jax is first imported, so every flag setting needs its own process; and keeping
JAX, PyTorch and TensorFlow in separate processes stops their thread pools from
competing with the framework being timed.

Why interleaved: this 2-core machine is shared, so its speed drifts. Every worker
is compiled and warmed up first and then waits; each repetition asks every worker
in turn (the order rotated per repetition) for one timed burst of training steps.
Drift then hits all configurations alike, and medians over repetitions compare them.
Only one worker computes at any moment; the others block on their stdin.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One configuration to time: what to build in the worker, and its XLA flags.

    ``options`` are framework-specific (see the ``build`` function of each
    ``bench_*.py``); ``devices`` > 1 splits the host into virtual XLA devices.
    """

    label: str
    framework: str  # jax | torch | keras | pipeline
    net: str
    batch: int
    devices: int = 1
    xla_flags: tuple[str, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The worker's environment: XLA flags must be in place before jax is imported."""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
                   JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        env.pop("XLA_FLAGS", None)
        # Flags are explicit per spec: jaxcifar's own defaults (jaxcifar/xla_cpu.py) are off,
        # so "default flags" rows measure XLA's defaults and the Eigen rows jaxcifar's.
        env["JAXCIFAR_XLA_CPU_DEFAULTS"] = "0"
        if self.framework in ("jax", "pipeline"):
            flags = [f"--xla_force_host_platform_device_count={self.devices}", *self.xla_flags]
            env["XLA_FLAGS"] = " ".join(flags)
        return env


@dataclasses.dataclass(frozen=True)
class Target:
    """What a ``bench_*.build`` returns: ``run(n)`` does n steps and waits until they are done."""

    run: Callable[[int], None]
    images_per_step: int
    compile_s: float | None = None  # one-off cost before the first step (jit, tf.function, ...)


@dataclasses.dataclass
class Result:
    """Timings of one spec: images/s of every repetition plus one-off setup costs."""

    spec: Spec
    compile_s: float | None = None
    steps_per_rep: int = 0
    rates: list[float] = dataclasses.field(default_factory=list)
    # Images per CPU-second (all threads): less sensitive than img/s to other jobs
    # taking the cores, but it also counts threads that spin while waiting.
    cpu_rates: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        rates = self.rates
        return {
            "label": self.spec.label, "framework": self.spec.framework, "net": self.spec.net,
            "batch": self.spec.batch, "devices": self.spec.devices,
            "xla_flags": list(self.spec.xla_flags), "options": self.spec.options,
            "compile_s": self.compile_s, "steps_per_rep": self.steps_per_rep,
            "images_per_s": rates,
            "median": statistics.median(rates) if rates else None,
            "min": min(rates) if rates else None, "max": max(rates) if rates else None,
            "images_per_cpu_s": self.cpu_rates,
            "cpu_median": statistics.median(self.cpu_rates) if self.cpu_rates else None,
            "error": self.error,
        }


class Worker:
    """A worker subprocess speaking JSON lines: it answers 'ready', then one burst per 'run'."""

    def __init__(self, spec: Spec, rep_seconds: float, log_dir: Path):
        self.spec = spec
        self.log = open(log_dir / f"{_slug(spec.label)}.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(dataclasses.asdict(spec)), str(rep_seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=spec.env(), cwd=WORKER.parent.parent)

    def request(self, command: str) -> dict[str, Any]:
        """Send one command (or none, for the initial 'ready') and wait for its reply."""
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"worker exited with code {self.proc.returncode}; "
                               f"see {self.log.name}: {_tail(Path(self.log.name))}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)
        self.log.close()


def run_group(specs: Sequence[Spec], reps: int, rep_seconds: float, log_dir: Path,
              progress: Callable[[str], None] = print) -> list[Result]:
    """Start (one at a time, so compile times are not disturbed) and then interleave ``specs``."""
    results = {spec.label: Result(spec) for spec in specs}
    workers: list[Worker] = []
    for spec in specs:
        worker = Worker(spec, rep_seconds, log_dir)
        try:
            ready = worker.request("")
        except (RuntimeError, json.JSONDecodeError) as err:
            results[spec.label].error = str(err)
            worker.close()
            progress(f"  {spec.label}: FAILED ({err})")
            continue
        results[spec.label].compile_s = ready.get("compile_s")
        results[spec.label].steps_per_rep = ready["steps_per_rep"]
        progress(f"  {spec.label}: ready (compile {_fmt(ready.get('compile_s'))} s, "
                 f"{ready['steps_per_rep']} steps/rep, {ready['warm_rate']:.0f} img/s warm-up)")
        workers.append(worker)
    try:
        for rep in range(reps):
            order = workers[rep % len(workers):] + workers[: rep % len(workers)] if workers else []
            for worker in order:
                _time_once(worker, results[worker.spec.label])
            progress(f"  rep {rep + 1}/{reps}: " + ", ".join(
                f"{w.spec.label}={results[w.spec.label].rates[-1]:.0f}" if len(results[w.spec.label].rates) > rep
                else f"{w.spec.label}=FAILED" for w in workers))
    finally:
        for worker in workers:
            worker.close()
    return [results[spec.label] for spec in specs]


def _time_once(worker: Worker, result: Result) -> None:
    if result.error:
        return
    try:
        reply = worker.request("run")
    except (RuntimeError, json.JSONDecodeError) as err:
        result.error = str(err)
        return
    result.rates.append(reply["images"] / reply["seconds"])
    result.cpu_rates.append(reply["images"] / max(reply["cpu_seconds"], 1e-9))


def log_dir() -> Path:
    """Worker stderr goes here; it is only read when a worker fails."""
    return Path(tempfile.mkdtemp(prefix="jaxcifar-bench-"))


def machine_info() -> dict[str, Any]:
    """CPU, cores, load and library versions, so a results file says where it came from."""
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "tensorflow", "tensorflow-cpu", "keras",
                    "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
            "python": sys.version.split()[0], "versions": versions,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": os.uname().nodename,
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)[:80]


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
