"""The README's workflow, command by command, runs to the end on every network a recipe uses.

The commands are read from README.md's "The workflow, command by command" block, so the test
runs what a user copies: each `python -m jaxcifar.*` line in order, in a fresh process, from
a temporary folder (their runs/, exported/ and quantized/ land there), with tiny-size
overrides appended. Each serve command is started and sent every `curl` request of the
block. A command that dies (as quantize once did, on the LiteRT int8 model of airbench)
fails the test with its output.

The recipes' own network runs the whole chain so. The others run only the commands whose code
differs by network (training the model, exporting it, quantizing it; of the trainings, those
the export reads), each through its tool's `main` in the test's process: evaluate, predict
and serve take one code path whatever the network, and a fresh process per command costs
seconds of imports for a second of work.
"""

import contextlib
import importlib
import json
import pathlib
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from jaxcifar import config as config_lib
from jaxcifar import export, quantize

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

httpx = pytest.importorskip("httpx", reason="the serve step needs the test extra: pip install -e '.[test]'")

WORKFLOW_HEADING = "## The workflow, command by command"
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STEP_TIMEOUT_S = 600
READY_TIMEOUT_S = 180

# Each network a recipe uses, as overrides that turn the README's recipes (airbench) to it at
# toy size. model_kwargs is replaced whole: the recipes' `widths` is airbench's alone. The ResNet
# keeps each kind of block (stride 2, a 1x1 shortcut) in two stages of one.
NETWORKS = {
    "airbench": ["--config.model_kwargs.widths=(8,16,16)"],
    "simple_cnn": ["--config.model=simple_cnn", "--config.model_kwargs={}"],
    "resnet18": ["--config.model=resnet18", "--config.model_kwargs={'width': 8, 'stage_sizes': (1, 1)}"],
}
WHOLE_CHAIN = "airbench"  # the recipes' network: every command, each in a fresh process
NETWORK_STEPS = ("jaxcifar.train", "jaxcifar.export", "jaxcifar.quantize")  # the other networks' commands
# A toy budget on the real data. train[:500] holds at least 36 images of each class, enough
# for the README's own 25-per-class budget; decoding it, not all 50,000, keeps each step cheap.
TINY_TRAIN = ["--config.data.train_split=train[:500]", "--config.data.examples_per_class=5",
              "--config.data.eval_split=test[:100]", "--config.batch_size=50", "--config.eval_batch_size=100"]
PREDICT_VALUED_FLAGS = {"--workdir", "--checkpoint", "--top_k"}
TINY_QUANTIZE = ["--extra_splits=", "--calibration_images=20", "--timing_repeats=1"]


def workflow_commands() -> list[list[str]]:
    """The words of each command in the section's first bash block, continuations joined and
    comments dropped, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(WORKFLOW_HEADING):]
    block = re.search(r"```bash\n(.*?)^```", section, re.S | re.M)[1]
    return [words for line in block.replace("\\\n", " ").splitlines() if (words := shlex.split(line, comments=True))]


def tool(argv: list[str]) -> str | None:
    """`jaxcifar.X` of a `python -m jaxcifar.X ...` command, else None."""
    return argv[2] if argv[:2] == ["python", "-m"] and argv[2].startswith("jaxcifar.") else None


def flag(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` (the last one given), or None."""
    value = None
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def positionals(argv: list[str], valued_flags: set[str]) -> list[str]:
    """The words after the module that are neither a flag nor a value of one in `valued_flags`."""
    words, found = argv[3:], []
    for i, word in enumerate(words):
        if not word.startswith("--") and not (i and words[i - 1] in valued_flags):
            found.append(word)
    return found


def config_key(override: str) -> str:
    return override.split("=", 1)[0]


def train_overrides(argv: list[str], network: str) -> list[str]:
    """The toy size and `network` for one `jaxcifar.train` command: one epoch per stage of its
    recipe, and the TINY_TRAIN budget. A field the README's command sets itself keeps the
    README's value (e.g. step 2's finetune stage of 0 epochs)."""
    stages = config_lib.load_recipe(flag(argv, "--config")).stages
    epochs = [f"--config.stages.{stage['name']}.epochs=1" for stage in stages] or ["--config.epochs=1"]
    own = {config_key(word) for word in argv if word.startswith("--config.")}
    return [o for o in epochs + TINY_TRAIN if config_key(o) not in own] + NETWORKS[network]


def runnable(argv: list[str], network: str, data_dir: str) -> list[str]:
    """The README command as this test runs it: this interpreter, the prepared data, a toy size."""
    command = [data_dir if i and argv[i - 1] == "--data_dir" else word for i, word in enumerate(argv)]
    command[0] = sys.executable
    if tool(argv) == "jaxcifar.train":
        command += train_overrides(argv, network)
    elif tool(argv) == "jaxcifar.quantize":
        command += TINY_QUANTIZE
    return command


def run_step(argv: list[str], cwd) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert done.returncode == 0, (f"{shlex.join(argv[1:])} {ending(done.returncode)}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return done


def run_here(argv: list[str], command: list[str]) -> None:
    """`command` (README command `argv` as runnable made it) through its tool's `main` in this
    process, from the current directory."""
    tool_main = importlib.import_module(tool(argv).replace("jaxcifar.", "jaxcifar.cli.", 1)).main
    assert tool_main(command[3:]) == 0, shlex.join(command[1:])


def ending(returncode: int) -> str:
    """How a process ended, naming the signal that killed it (an abort is SIGABRT, not -6)."""
    return f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with {returncode}"


# ----- what each step must leave behind -----
def check_accuracy(report: dict) -> None:
    """A train summary or evaluate report gives an accuracy (a classifier's, or a
    self-supervised run's kNN accuracy)."""
    value = next((report[key] for key in ("accuracy", "test_accuracy", "knn_accuracy", "test_knn_accuracy")
                  if key in report), None)
    assert value is not None and 0.0 <= value <= 1.0, report


def check_train(argv, cwd, done):
    """A summary with an accuracy; a command (`done`, its process) says where it wrote it."""
    check_accuracy(json.loads((cwd / flag(argv, "--workdir") / "summary.json").read_text()))
    assert done is None or "summary.json" in done.stdout


def check_evaluate(argv, cwd, done):
    reports = list((cwd / flag(argv, "--workdir") / "eval").glob("*/report.json"))
    assert len(reports) == 1, reports
    check_accuracy(json.loads(reports[0].read_text()))


def check_export(argv, cwd, done):
    out = cwd / flag(argv, "--out")
    assert (out / export.STABLEHLO_FILE).is_file() and (out / export.SERVING_FILE).is_file()


def check_quantize(argv, cwd, done):
    """Every artefact proven and published, and its accuracy reported."""
    out = cwd / flag(argv, "--out")
    report = json.loads((out / quantize.REPORT).read_text())
    assert report["failed"] == {}
    for label in quantize.ARTEFACTS:
        assert (out / label / export.SERVING_FILE).is_file(), label
    evaluated = next(report[split] for split in report if split.startswith("test"))
    # All but the Qwix int8 model, which a CPU evaluates only with --full (too slow).
    assert all(f"{label}_accuracy" in evaluated for label in quantize.ARTEFACTS if label != "int8"), evaluated


def check_predict(argv, cwd, done):
    """Every image file named, each followed by CIFAR-10 classes."""
    lines = done.stdout.splitlines()
    for file in positionals(argv, PREDICT_VALUED_FLAGS):
        assert lines[lines.index(f"{file}:") + 1].split()[0] in CIFAR10_NAMES, done.stdout


CHECKS = {"jaxcifar.train": check_train, "jaxcifar.evaluate": check_evaluate, "jaxcifar.export": check_export,
          "jaxcifar.quantize": check_quantize, "jaxcifar.predict": check_predict}


# ----- serving -----
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list[str], cwd):
    """The server of a serve command on a free loopback port; yields its URL once it has
    logged that it is ready, and stops it afterwards."""
    port = free_port()
    process = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        wait_for_ready(process, lines)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, as a supervisor stops it; SIGKILL if it has not stopped within a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def wait_for_ready(process: subprocess.Popen, lines: queue.Queue) -> None:
    seen, deadline = [], time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, f"the server {ending(process.returncode)}:\n{''.join(seen)}"
            continue
        seen.append(line)
        if "Ready: " in line:
            return
    raise TimeoutError(f"no Ready line within {READY_TIMEOUT_S} s:\n{''.join(seen)}")


def curl_request(curl: list[str]) -> tuple[urllib.parse.SplitResult, dict[str, str]]:
    """(URL, {form field: file}) of a README `curl` command: -s, -F name=@file, one URL."""
    url, files, words = None, {}, iter(curl[1:])
    for word in words:
        if word == "-F":
            name, path = next(words).split("=@", 1)
            files[name] = path
        elif not word.startswith("-"):
            url = urllib.parse.urlsplit(word)
    return url, files


def send(curl: list[str], server: str, cwd) -> dict:
    """The JSON answer to a README `curl` command, sent to `server` instead of the one it names."""
    url, files = curl_request(curl)
    target = urllib.parse.urlunsplit(url._replace(netloc=urllib.parse.urlsplit(server).netloc))
    uploads = {name: (path, (cwd / path).read_bytes()) for name, path in files.items()}
    response = httpx.post(target, files=uploads, timeout=60) if uploads else httpx.get(target, timeout=60)
    assert response.status_code == 200, f"{shlex.join(curl)}: {response.status_code} {response.text}"
    return response.json()


def check_answer(curl: list[str], answer: dict) -> None:
    """A prediction names CIFAR-10 classes for each uploaded file; model metadata gives the
    class list. A request of another kind needs its own check here."""
    url, files = curl_request(curl)
    if url.path == "/v1/predict":
        assert {result["file"] for result in answer["results"]} == set(files.values()), answer
        assert all(p["class"] in CIFAR10_NAMES for result in answer["results"] for p in result["predictions"])
    elif url.path.startswith("/v2/models/"):
        assert tuple(answer["parameters"]["class_names"]) == CIFAR10_NAMES, answer
    else:
        pytest.fail(f"no check for the README's request {shlex.join(curl)}")


# ----- the user's files -----
def write_user_images(commands: list[list[str]], cwd) -> None:
    """An image, of a size the model must resize, for each file the commands upload or
    predict; its extension picks the format."""
    names = {path for argv in commands if argv[0] == "curl" for path in curl_request(argv)[1].values()}
    names.update(name for argv in commands if tool(argv) == "jaxcifar.predict"
                 for name in positionals(argv, PREDICT_VALUED_FLAGS))
    rng = np.random.default_rng(0)
    for name in sorted(names):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(cwd / name)


def test_the_readme_workflow_parses_into_commands_this_test_can_run():
    """Every command of the block is a jaxcifar tool this test checks, or a request to the
    server; every stage of the chain is there."""
    commands = workflow_commands()
    tools = {tool(argv) for argv in commands if argv[0] != "curl"}
    assert tools == {*CHECKS, "jaxcifar.serve"}, commands
    assert any(argv[0] == "curl" for argv in commands)


@pytest.mark.slow
def test_the_readme_workflow_runs_to_the_end(tmp_path, shared_data_dir):
    commands = workflow_commands()
    write_user_images(commands, tmp_path)
    requests = [argv for argv in commands if argv[0] == "curl"]
    for argv in filter(tool, commands):
        command = runnable(argv, WHOLE_CHAIN, shared_data_dir)
        if tool(argv) == "jaxcifar.serve":
            with serving(command, tmp_path) as url:
                for curl in requests:
                    check_answer(curl, send(curl, url, tmp_path))
        else:
            CHECKS[tool(argv)](argv, tmp_path, run_step(command, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("network", [network for network in NETWORKS if network != WHOLE_CHAIN])
def test_every_network_trains_exports_and_quantizes_as_the_readme_says(network, tmp_path, shared_data_dir,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in network_steps(workflow_commands()):
        run_here(argv, runnable(argv, network, shared_data_dir))
        CHECKS[tool(argv)](argv, tmp_path, None)


def network_steps(commands: list[list[str]]) -> list[list[str]]:
    """The NETWORK_STEPS commands, less a training whose run no later one of them reads: the
    exports and quantizations, and the trainings that lead to them (not step 2's probe,
    whose code is step 3's first stage)."""
    kept, needed = [], set()
    for argv in reversed(commands):
        if tool(argv) not in NETWORK_STEPS or (tool(argv) == "jaxcifar.train" and flag(argv, "--workdir") not in needed):
            continue
        kept.append(argv)
        needed.update(filter(None, (flag(argv, "--workdir"), flag(argv, "--init_from"))))
    return kept[::-1]
