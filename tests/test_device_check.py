"""experiments/device_check.py's dry run: every step of the GPU check at tiny size on the CPU,
so that the script cannot rot between the times a GPU is lent."""

import json
import pathlib
import subprocess
import sys

import pytest

from jaxcifar.testing import synthetic_split, write_jpeg_pack

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to


@pytest.mark.slow  # a fresh process; `make test` (CI) runs it
def test_the_device_checks_dry_run_records_every_step(tmp_path):
    pack, out = tmp_path / "pack.npz", tmp_path / "device_check.json"
    write_jpeg_pack(pack, {"train": synthetic_split(64, 0), "test": synthetic_split(40, 1)})
    done = subprocess.run([sys.executable, str(REPO / "experiments/device_check.py"), "--dry-run", "--pack", str(pack),
                           "--airbench_script", str(tmp_path / "absent.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert "install" not in steps  # a dry run installs nothing
    for precision in ("float32", "bfloat16"):
        record = steps[f"fast_muon_{precision}"]
        assert "error" not in record, record
        assert record["precision"] == precision and record["complete"]
        assert record["train_images"] == 64 and record["test_images"] == 40
        assert len(record["test_accuracy"]) == 1 and 0 <= record["final_accuracy_tta"] <= 1
        assert record["train_images_per_second"] > 0 and record["peak_host_bytes"] > 0
    assert "skipped" in steps["airbench94_muon"]
