"""Load test of the inference server: `python -m jaxcifar.serve` as real processes, driven over
HTTP on 127.0.0.1 by concurrent clients, with dynamic batching on and off.

    .venv/bin/python benchmarks/serve_load.py --workdir /tmp/serve_cnn [--seconds 5] [--reps 3] [--concurrency 1 8 64]
    .venv/bin/python benchmarks/serve_load.py --export float32=q/float32 litert_int8=q/litert_int8 \
        --result serve_load_litert

(needs the serve extra: pip install -e ".[serve]"). The servers start side by side: for
`--workdir`, `--max_batch 64` (batching on) and `--max_batch 1` (off); for each `--export
NAME=DIR` (an export or one of `jaxcifar.quantize`'s LiteRT directories), one with batching
on. Each concurrency level runs against one server after the other, `--reps` times, the order
rotated each time, so that load from elsewhere on a shared machine hits all alike; the table
shows the median of the repetitions and each one (the JSON: each one's load average before and
after). Each client (a thread with a
keep-alive connection) sends one-image Open Inference Protocol requests (random uint8 pixels,
bodies encoded before the clock starts) back to back for `--seconds`, after a one-second
warm-up.

The clients share the machine with the server: on a 2-core CPU their HTTP and JSON work takes
cores the server would otherwise use, so absolute numbers are lower bounds; the on/off
comparison is what the script is for. Writes benchmarks/results/RESULT.json (`--result`,
default serve_load; command, machine, date) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
from harness import machine_info

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODES = {"on": ["--max_batch", "64"], "off": ["--max_batch", "1"]}


def server_arguments(workdir: str | None, exports: list[str]) -> dict[str, list[str]]:
    """{server name: its `jaxcifar.serve` arguments} for the workdir (batching on and off)
    and each NAME=DIR export (batching on)."""
    servers = {f"workdir, batching {mode}": ["--workdir", workdir, *MODES[mode]] for mode in MODES if workdir}
    for item in exports:
        name, _, directory = item.partition("=")
        servers[name] = ["--export", directory, *MODES["on"]]
    return servers


def start_server(server_args: list[str], max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "jaxcifar.serve", *server_args, "--port", str(port),
                                "--max_wait_ms", str(max_wait_ms)], cwd=REPO)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready"):
                return
        except OSError:  # not listening yet, or 503 (urllib.error.HTTPError) while warming up
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server {url} not ready after {timeout} s")


def request_bodies(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [json.dumps({"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                                    "data": rng.integers(0, 256, 3072).tolist()}]}).encode() for _ in range(count)]


def client_loop(url: str, index: int, concurrency: int, bodies: list[bytes], record_from: float, stop: float,
                latencies: list[float], errors: list[str]) -> None:
    """One client: a keep-alive connection posting back to back until `stop`; requests started
    after `record_from` are recorded."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    i = index
    while (start := time.perf_counter()) < stop:
        try:
            connection.request("POST", "/v2/models/jaxcifar/infer", bodies[i % len(bodies)],
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            error = None if response.status == 200 else f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as e:
            error = repr(e)
            connection.close()  # http.client reconnects on the next request
        if start >= record_from:
            (errors.append(error) if error else latencies.append(time.perf_counter() - start))
        i += concurrency
    connection.close()


def drive(url: str, concurrency: int, seconds: float, bodies: list[bytes]) -> dict:
    """`concurrency` client threads for a one-second warm-up, then `seconds` measured. Threads
    with the standard library's HTTP client, not asyncio httpx: at 64 clients httpx's
    connection pool, not the server, capped a first run at 46 requests/s against 311 here."""
    latencies, errors = [], []
    record_from = time.perf_counter() + 1.0
    stop = record_from + seconds
    threads = [threading.Thread(target=client_loop, args=(url, c, concurrency, bodies, record_from, stop,
                                                          latencies, errors)) for c in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - record_from
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "seconds": elapsed, "throughput_rps": len(latencies) / elapsed,
            **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)}}


def batch_sizes(url: str) -> tuple[float, float]:
    """(images, device calls) so far, from the server's batch-size histogram."""
    with urllib.request.urlopen(f"{url}/metrics") as response:
        text = response.read().decode()
    read = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
    return read("jaxcifar_batch_size_sum"), read("jaxcifar_batch_size_count")


def measure(url: str, concurrency: int, seconds: float, bodies: list[bytes]) -> dict:
    images0, calls0 = batch_sizes(url)
    result = drive(url, concurrency, seconds, bodies)
    images1, calls1 = batch_sizes(url)
    return {**result, "mean_batch_size": (images1 - images0) / max(calls1 - calls0, 1)}


def medians(reps: list[dict]) -> dict:
    """One table row from the repetitions of a level: medians, and every error."""
    keys = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_batch_size")
    return {**{k: float(np.median([r[k] for r in reps])) for k in keys}, "errors": sum(r["errors"] for r in reps),
            "requests": sum(r["requests"] for r in reps)}


def table(rows: list[dict]) -> str:
    """Medians over the repetitions, and each repetition's requests/s."""
    lines = ["| server | clients | requests/s | each repetition | p50 ms | p95 ms | p99 ms | errors | mean batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        each = " / ".join(f"{rep['throughput_rps']:.0f}" for rep in r["reps"])
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['throughput_rps']:.0f} | {each} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['mean_batch_size']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a trained run, e.g. /tmp/serve_cnn, served with batching on and off")
    parser.add_argument("--export", nargs="*", default=[], metavar="NAME=DIR",
                        help="exported models to serve side by side, e.g. litert_int8=quantized/cnn/litert_int8")
    parser.add_argument("--result", default="serve_load", help="benchmarks/results/RESULT.json (default serve_load)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per repetition (default 5)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each level and mode (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="the batching server's wait (default 5)")
    args = parser.parse_args()
    if not (args.workdir or args.export):
        parser.error("give a --workdir, an --export NAME=DIR, or both")
    machine = machine_info()  # its load average is the one at the start
    arguments = server_arguments(args.workdir, args.export)
    servers = {name: start_server(server_args, args.max_wait_ms) for name, server_args in arguments.items()}
    try:
        for process, url in servers.values():
            wait_ready(process, url)
        bodies = request_bodies(256)
        reps = {(name, c): [] for c in args.concurrency for name in servers}
        for concurrency in args.concurrency:
            for rep in range(args.reps):
                # The order rotated each repetition: a change in the machine's load falls on
                # each server in each position, not always on the same one.
                names = list(servers)[rep % len(servers):] + list(servers)[:rep % len(servers)]
                for position, name in enumerate(names):
                    before = [round(x, 2) for x in os.getloadavg()]
                    record = measure(servers[name][1], concurrency, args.seconds, bodies)
                    reps[name, concurrency].append({**record, "rep": rep + 1, "position": position,
                                                    "load_average_before": before,
                                                    "load_average_after": [round(x, 2) for x in os.getloadavg()]})
                    print(f"{name}, {concurrency} clients, repetition {rep + 1}: {record['throughput_rps']:.0f} req/s "
                          f"(load {before[0]})", flush=True)
        rows = [{"server": name, "concurrency": c, **medians(runs), "reps": runs} for (name, c), runs in reps.items()]
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    # The load average says how much else ran on the machine meanwhile.
    result = RESULTS / f"{args.result}.json"
    result.write_text(json.dumps({"machine": machine,
                                  "loadavg_at_end": os.getloadavg(), "servers": arguments, "seconds": args.seconds,
                                  "reps": args.reps, "max_wait_ms": args.max_wait_ms, "rows": rows}, indent=2) + "\n")
    print(f"wrote {result}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
