"""benchmarks/formulations.py: each alternative computes what it replaces, values and gradients,
so a speed ratio measured by benchmarks/fast_step.py compares like with like. The checks live
in the script (its command line runs them), beside the formulations they check."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


@pytest.mark.slow  # a fresh process
def test_each_formulation_computes_what_it_replaces():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "formulations.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Each formulation computes what it replaces" in done.stdout
