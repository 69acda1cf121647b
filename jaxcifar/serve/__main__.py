"""`python -m jaxcifar.serve --workdir W` (or `--export DIR`): serve a trained model over HTTP.

Install the server's dependencies first: pip install -e ".[serve]". On SIGTERM or Ctrl-C,
uvicorn stops accepting connections, finishes the requests in flight, then exits by
re-raising the signal (status 143 for SIGTERM), so a supervisor sees why it stopped.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from jaxcifar.cli import USAGE_ERROR, reports_user_errors
from jaxcifar.runs import parse_checkpoint


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.serve",
        description="Serve a trained run: Open Inference Protocol (KServe v2) on /v2, image uploads on "
                    "/v1/predict, Prometheus metrics on /metrics, a web page on /.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="run directory written by `python -m jaxcifar.train`")
    source.add_argument("--export", help="directory written by `python -m jaxcifar.export` (its model.stablehlo) or one of the "
                             "LiteRT directories `python -m jaxcifar.quantize` writes (its model.tflite)")
    parser.add_argument("--checkpoint", type=parse_checkpoint, default="best",
                        help="with --workdir: 'best' (default), 'latest' or a step number")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="with --workdir: average with the mirrored image (default: the run's config.tta)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=positive, default=64,
                        help="most images per batch of grouped requests (default 64); 1 turns batching off")
    parser.add_argument("--max_wait_ms", type=non_negative, default=5.0,
                        help="how long a batch waits for more requests before it runs (default 5)")
    parser.add_argument("--model_name", default=None,
                        help="the name in /v2/models/{name} (default: the workdir's or export's folder name); "
                             "'jaxcifar' is answered too")
    parser.add_argument("--max_body_bytes", type=positive, default=16 * 2**20,
                        help="larger request bodies get 413 (default 16 MiB)")
    args = parser.parse_args(argv)
    args.model_name = args.model_name or folder_name(args.workdir or args.export)
    if args.export and (args.checkpoint != "best" or args.tta is not None):
        parser.error("--checkpoint and --tta apply to --workdir; an export has its checkpoint and TTA baked in")
    return args


def folder_name(path: str) -> str:
    """A directory's own name, even given as '.' or with a trailing slash: the name a user
    guesses for the model in it (runs/ft25 serves 'ft25')."""
    return pathlib.Path(path).resolve().name


def base_url(host: str, port: int) -> str:
    """http://HOST:PORT, with an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from jaxcifar.serve import app, model
    except ImportError as e:
        print(f"error: {e.name} is missing; install the server's dependencies: pip install -e \".[serve]\"",
              file=sys.stderr)
        return USAGE_ERROR
    served = (model.from_export(args.model_name, args.export) if args.export else
              model.from_workdir(args.model_name, args.workdir, args.checkpoint, args.tta))
    url = base_url(args.host, args.port)
    print(f"serving {args.model_name} (step {served.step}, {served.platform}) on {url}/ "
          f"max_batch={args.max_batch} max_wait_ms={args.max_wait_ms}; warming up, a line says when it is ready",
          flush=True)
    # No access log: a line per request costs CPU under load, and /metrics counts requests anyway.
    uvicorn.run(app.create_app(served, url, args.max_batch, args.max_wait_ms, args.max_body_bytes),
                host=args.host, port=args.port, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
