"""The documents tell the truth: the README's library example runs as written; every command
in README.md, docs/, experiments/README.md and benchmarks/NOTES.md names a real module or
script, flags its parser accepts, real recipes and config fields, and paths that exist; every
link and file reference resolves; and every rendered result table matches its JSON."""

import argparse
import contextlib
import functools
import importlib.util
import io
import logging
import os
import pathlib
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest

from jaxcifar import config as config_lib
from jaxcifar import runs

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

DOCUMENTS = (REPO / "README.md", REPO / "experiments" / "README.md", REPO / "benchmarks" / "NOTES.md",
             *sorted((REPO / "docs").glob("*.md")))
# A path a command reads must exist in the clone (or ../shared), or be written by an earlier
# command of the same document: these flags name what a command writes.
OUTPUT_FLAGS = {"--out", "--out_dir"}
WORKDIR_WRITERS = ("jaxcifar.train", "experiments/")  # for them --workdir is an output too
# Experiment records read the runs/ folders their earlier experiments wrote under defaults.
# third_party/ holds files the reader supplies (airbench94_muon.py is not redistributed).
RECORD_INPUTS, READER_SUPPLIED = REPO / "runs", REPO / "third_party"
PLACEHOLDERS = re.compile(r"\b(NAME|DIR|WORKDIR|SPLIT|STEP|RUN)\b")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
COMMAND = re.compile(r"(?:cd (?P<cd>\S+) && )?(?P<cmd>\S*python3? (?:-m jaxcifar[\w.]*|\S+\.py)\b.*)")
CONTROL = {"&&", "||", "|", ";", ">", "<", "2>"}


def library_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Library use"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(tmp_path, shared_data_dir, monkeypatch, capsys):
    code = library_example()
    assert "stages=" in code and "evaluate" in code  # frozen + fine-tune fit, then evaluation
    monkeypatch.chdir(tmp_path)  # the example writes runs/library_example under the cwd
    code = code.replace('"../shared/tensorflow_datasets"', repr(shared_data_dir))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()  # fit's per-epoch lines, then the example's print
    assert printed[0].startswith("epoch 1/2 [frozen]")
    accuracy, report_accuracy, _ = printed[-1].split(" ", 2)
    assert 0.0 <= float(accuracy) <= 1.0 and abs(float(accuracy) - float(report_accuracy)) < 1e-6
    assert os.path.exists(tmp_path / "runs" / "library_example" / "summary.json")


# ----- reading commands out of Markdown -----
def command_lines(text: str) -> list[str]:
    """Shell lines of fenced blocks (continuations joined) and inline code spans of the prose,
    in document order, so that a command comes after the ones that wrote what it reads."""
    found = [(m.start(2) + i, line) for m in FENCE.finditer(text) if m[1] in ("", "bash", "sh")
             for i, line in enumerate(m[2].replace("\\\n", " ").splitlines())]
    prose = FENCE.sub(lambda m: " " * len(m[0]), text)
    found += [(m.start(), m[1].replace("\n", " ")) for m in INLINE.finditer(prose)]
    return [line for _, line in sorted(found)]


def parse_command(line: str) -> tuple[pathlib.Path, list[str]] | None:
    """(working directory, argv from `python` on) of a `python -m jaxcifar.X` or
    `python SCRIPT.py` command, or None when the line runs neither. Raises ValueError where
    a shell could not split the command either (an unbalanced quote)."""
    match = COMMAND.search(line)
    if not match:
        return None
    argv = shlex.split(match["cmd"], comments=True)
    argv = argv[:next((i for i, token in enumerate(argv) if token in CONTROL), len(argv))]
    return REPO / (match["cd"] or "."), argv


def quoted_fields(line: str) -> list[tuple[str, str]]:
    """(key, value) of each `--config.KEY=VALUE` a line that is no command quotes. Raises
    ValueError where such a line does not split as shell; prose without a field (a diagram,
    an apostrophe) is not split at all."""
    if "--config." not in line:
        return []
    return [tuple(token[len("--config."):].split("=", 1)) for token in shlex.split(line, comments=True)
            if re.match(r"--config\.[a-z_.]+=", token)]


def split_args(args: list[str]) -> list[tuple[str | None, str | None]]:
    """(flag, value) pairs: `--flag value`, `--flag=value`, a bare `--flag`, or a positional (None, value)."""
    pairs, i = [], 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and "=" in token:
            pairs.append(tuple(token.split("=", 1)))
        elif token.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            pairs.append((token, value))
            i += value is not None
        else:
            pairs.append((None, token))
        i += 1
    return pairs


# ----- what the tools accept -----
@contextlib.contextmanager
def logging_restored():
    """A tool's main sets up logging for its own process (handlers, propagation); undo that, so
    that the tests after this one still capture log records."""
    before = {name: (logger.handlers[:], logger.level, logger.propagate)
              for name, logger in logging.Logger.manager.loggerDict.items() if isinstance(logger, logging.Logger)}
    try:
        yield
    finally:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                logger.handlers[:], level, logger.propagate = before.get(name, ([], logging.NOTSET, True))
                logger.setLevel(level)


@functools.cache
def module_flags(module: str) -> frozenset[str]:
    """The flags `python -m MODULE --help` lists, read in this process as `python -m` runs it."""
    out = io.StringIO()
    with (logging_restored(), contextlib.redirect_stdout(out), warnings.catch_warnings(),
          pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit)):
        patch.setattr(sys, "argv", [module, "--help"])
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return frozenset(re.findall(r"(?<![\w-])--[a-z][\w.-]*", out.getvalue()))


@functools.cache
def script_flags(script: pathlib.Path) -> frozenset[str]:
    """The flags a script declares, and those of `runs.add_run_arguments` where it calls it."""
    text = script.read_text()
    declared = frozenset(re.findall(r"add_argument\(\s*[\"'](--[\w.-]+)", text))
    return declared | (run_argument_flags() if "add_run_arguments(" in text else frozenset())


def run_argument_flags() -> frozenset[str]:
    parser = argparse.ArgumentParser()
    runs.add_run_arguments(parser)
    return frozenset(flag for action in parser._actions for flag in action.option_strings if flag.startswith("--"))


def is_module(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and (spec.submodule_search_locations is None
                                 or importlib.util.find_spec(module + ".__main__") is not None)


def config_errors(recipe: str | None, overrides: list[tuple[str, str]]) -> list[str]:
    """Apply `--config.KEY=VALUE` overrides as the train CLI does, to `recipe` (or, for a flag
    quoted without a command, to any recipe that takes it)."""
    errors = []
    for key, value in overrides:
        problems = []
        for name in [recipe] if recipe else config_lib.recipe_names():
            try:
                config_lib.override(config_lib.load_recipe(name), key, value)
                break
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append(f"{name}: {e}")
        else:
            errors.append(f"--config.{key}={value}: " + "; ".join(problems))
    return errors


def command_errors(cwd: pathlib.Path, argv: list[str], created: set[pathlib.Path]) -> list[str]:
    """What is wrong with one command; the paths it writes are added to `created`."""
    if argv[1] == "-m":
        tool, args = argv[2], argv[3:]
        if not is_module(tool):
            return [f"no module {tool}"]
        flags = module_flags(tool)
    else:
        script = (cwd / argv[1]).resolve()
        if not script.is_file():
            return [f"no script {argv[1]} (from {cwd.relative_to(REPO) or '.'})"]
        tool, args, flags = str(script.relative_to(REPO)), argv[2:], script_flags(script)
    pairs = split_args(args)
    errors = [f"{tool} has no flag {flag}" for flag, _ in pairs
              if flag and not flag.startswith("--config.") and flag not in flags]
    recipe = next((value for flag, value in pairs if flag == "--config"), None)
    if recipe and not recipe.endswith(".py") and recipe not in config_lib.recipe_names():
        errors.append(f"no recipe {recipe!r}")
    errors += config_errors(recipe if recipe in config_lib.recipe_names() else None,
                            [(flag[len("--config."):], value or "") for flag, value in pairs
                             if flag and flag.startswith("--config.")])
    writes = OUTPUT_FLAGS | ({"--workdir"} if tool.startswith(WORKDIR_WRITERS) else set())
    for flag, value in pairs:
        if flag and flag.startswith("--config.") or not value or "/" not in value or "://" in value:
            continue
        value = value.partition("=")[2] if re.match(r"\w+=", value) else value  # a NAME=DIR value names DIR
        path = pathlib.Path(os.path.normpath(cwd / value))
        if flag in writes:
            created.add(path)
        elif not (path.exists() or any(path == c or c in path.parents for c in created)
                  or path.is_relative_to(READER_SUPPLIED)
                  or (argv[1] != "-m" and path.is_relative_to(RECORD_INPUTS))):
            errors.append(f"{value}: neither in the clone nor written by an earlier command")
    return errors


def document_errors(doc: pathlib.Path) -> list[str]:
    text, created, errors = doc.read_text(), set(), []
    for line in command_lines(text):
        try:
            parsed = parse_command(line)
            fields = [] if parsed else quoted_fields(line)  # e.g. `--config.stages.finetune.epochs=0` alone
        except ValueError as e:  # what a reader pastes fails in their shell too; nothing in it was checked
            errors.append(f"`{line.strip()}`: not a shell command ({e})")
            continue
        if parsed:
            errors += [f"`{line.strip()}`: {e}" for e in command_errors(*parsed, created)]
        else:
            errors += config_errors(None, fields)
    return errors


def test_every_command_names_real_modules_flags_recipes_fields_and_paths(shared_data_dir):
    errors = [f"{doc.relative_to(REPO)}: {e}" for doc in DOCUMENTS for e in document_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_command_check_catches_what_it_should(tmp_path):
    """Each rule refuses a command that breaks it (and passes one that keeps it)."""
    doc = tmp_path / "doc.md"
    bad = {
        "no module jaxcifar.nonexistent": "python -m jaxcifar.nonexistent --workdir runs/a",
        "has no flag --no_such_flag": "python -m jaxcifar.evaluate --workdir runs/a --no_such_flag 1",
        "no recipe 'no_such_recipe'": "python -m jaxcifar.train --config no_such_recipe --workdir runs/a",
        "--config.no_such_field=1": "python -m jaxcifar.train --config simple_cnn --workdir runs/a "
                                    "--config.no_such_field=1",
        "runs/never_trained: neither": "python -m jaxcifar.export --workdir runs/never_trained --out exported/x",
        " exported/never: neither": "python benchmarks/serve_load.py --export int8=exported/never",  # NAME=DIR
        "no script experiments/no_such.py": "python experiments/no_such.py",
        "experiments/fast_cpu.py has no flag --bogus": "cd experiments && python fast_cpu.py --bogus 1",
        "not a shell command (No closing quotation)": "python -m jaxcifar.train --config simple_cnn "
                                                      "--workdir runs/a --config.no_such_field='1",
    }
    for expected, command in bad.items():
        doc.write_text(f"```bash\n{command}\n```\n")
        assert any(expected in e for e in document_errors(doc)), (command, document_errors(doc))
    doc.write_text("Prose quoting `--config.data.no_such_field=1` alone.\n")
    assert any("--config.data.no_such_field=1" in e for e in document_errors(doc))
    doc.write_text("Prose quoting `--config.data.no_such_field='1` alone, its quote left open.\n")
    assert any("not a shell command (No closing quotation)" in e for e in document_errors(doc))
    doc.write_text("```bash\npython -m jaxcifar.train --config simple_cnn --workdir runs/a --config.epochs=1\n"
                   "python -m jaxcifar.export --workdir runs/a --out exported/a\n"
                   "python -m jaxcifar.serve --export exported/a --port 8080\n```\n")
    assert document_errors(doc) == []


# ----- links and file references -----
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_errors(doc: pathlib.Path) -> list[str]:
    text = FENCE.sub("", doc.read_text())
    errors = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            errors.append(f"link {target}: no {path}")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", file.read_text()), re.M)
            if anchor not in map(slug, headings):
                errors.append(f"link {target}: no heading with anchor #{anchor}")
    for ref in re.findall(r"(?<![\w./-])((?:jaxcifar|tests|experiments|benchmarks|docs|deploy|notebooks)/[\w./:-]*\w)",
                          text):
        path, _, name = ref.partition("::")
        if PLACEHOLDERS.search(path):
            continue
        if not (REPO / path).exists():
            errors.append(f"{ref}: no such file")
        elif name and not re.search(rf"def {re.escape(name)}\b", (REPO / path).read_text()):
            errors.append(f"{ref}: no test of that name")
    return errors


def test_every_link_and_file_reference_resolves():
    errors = [f"{doc.relative_to(REPO)}: {e}" for doc in DOCUMENTS for e in link_errors(doc)]
    assert not errors, "\n".join(errors)


def test_rendered_results_match_their_json():
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "report.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_readme_paths_exist_from_the_clone_root(shared_data_dir):
    """Paths the Python snippets pass, run from the clone root as the documents say."""
    paths = {p for doc in DOCUMENTS for p in re.findall(r'load_jpeg_pack\("([^"]+)"\)', doc.read_text())}
    assert paths
    for path in paths:
        assert (REPO / path).exists(), f"path {path} does not exist from the clone root"
