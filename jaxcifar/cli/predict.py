"""`python -m jaxcifar.predict`: the command line of jaxcifar/predict.py."""

from __future__ import annotations

import argparse
import json
from jaxcifar.cli import reports_user_errors
from jaxcifar.runs import add_run_arguments, load_run
from jaxcifar.predict import format_text, predict_files


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top-k classes of image files (any size, format and colour mode), by a trained run.",
        epilog="Preprocessing: each image is converted to RGB (transparency composited on white,\n"
               "greyscale/palette converted), EXIF-rotated, and resized to the run's data.image_size\n"
               "(32x32 for the CIFAR recipes) with Pillow's bilinear filter without keeping the aspect ratio.\n"
               "Exit status: 0 all files classified, 1 some file failed, 2 the run could not be opened.")
    add_run_arguments(parser)
    parser.add_argument("--top_k", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, anything Pillow reads)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top_k must be at least 1")
    run = load_run(args.workdir, args.checkpoint)
    run.require_classifier()
    results = predict_files(run, args.images, args.top_k, args.tta)
    if args.json:
        print(json.dumps({"workdir": str(run.workdir), "checkpoint_step": run.step,
                          "tta": run.resolve_tta(args.tta), "results": results}, indent=2))
    else:
        print(format_text(results))
    return int(any("error" in r for r in results))
