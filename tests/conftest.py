"""Fixtures: tiny synthetic splits and runs that train in seconds on a CPU (built by
jaxcifar.testing, which also holds the helpers tests call directly), and the prepared
CIFAR-10 where a test needs the real data."""

import os
import pathlib
import tempfile

import pytest

from jaxcifar import testing

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"

# One persistent XLA cache for the whole suite: both xdist workers and every subprocess they
# start (fit_synthetic.py, the CLIs) compile the same tiny steps, and each compiled once
# instead of in every fresh interpreter. A test that checks caching itself sets its own
# JAXCIFAR_COMPILATION_CACHE. The cache is keyed by the program, flags and devices, so it
# cannot hand a test another program's executable.
TEST_COMPILATION_CACHE = pathlib.Path(tempfile.gettempdir()) / f"jaxcifar-tests-xla-{os.getuid()}"
os.environ.setdefault("JAXCIFAR_COMPILATION_CACHE", str(TEST_COMPILATION_CACHE))


def pytest_configure(config):
    from jaxcifar import parallel

    parallel.configure_compilation_cache()
    config.addinivalue_line("markers", "slow: trains on the real data or in fresh processes; "
                                       "`make test-fast` leaves these out")


def pytest_collection_modifyitems(items):
    """Every test that reads the real data is slow (its own @pytest.mark.slow not needed)."""
    for item in items:
        if "shared_data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def tiny_data():
    return testing.tiny_data()


@pytest.fixture
def shared_data_dir():
    if not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip(f"prepared CIFAR-10 not found at {SHARED_DATA}")
    return str(SHARED_DATA)


@pytest.fixture(autouse=True)
def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    """(workdir, eval split, summary) of one tiny run on synthetic data (1 epoch of
    tiny_config), trained once per test process and shared by the evaluate, export, predict
    and serve tests. Read it; copy it before changing anything in it."""
    from jaxcifar import train

    workdir, data = tmp_path_factory.mktemp("tiny_run"), testing.tiny_data()
    summary = train.fit(testing.tiny_config(epochs=1), workdir, data=data)
    return workdir, data.eval, summary


@pytest.fixture(scope="session")
def tiny_run(tiny_run_dir):
    """The shared tiny run, opened at its final checkpoint."""
    from jaxcifar import runs

    return runs.load_run(tiny_run_dir[0], "latest")
