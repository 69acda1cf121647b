"""The README's library example runs as written (on the real data, from the repo root)."""

import os
import re

from tests.conftest import REPO


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


def test_readme_paths_exist_from_the_clone_root(shared_data_dir):
    """Paths the README's commands and snippets pass, run from the clone root as it says."""
    readme = (REPO / "README.md").read_text()
    paths = set(re.findall(r'load_jpeg_pack\("([^"]+)"\)', readme)) | set(re.findall(r"--data_dir (\.\./[^\s`]+)", readme))
    assert paths
    for path in paths:
        assert (REPO / path).exists(), f"README path {path} does not exist from the clone root"
