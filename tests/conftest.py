"""Fixtures: tiny synthetic splits and runs that train in seconds on a CPU (built by
jaxcifar.testing, which also holds the helpers tests call directly), and the prepared
CIFAR-10 where a test needs the real data. Markers: `slow`, and `tf(feature)` on a test that
needs TensorFlow (the optional `tf` extra) for `feature`, skipped where it is not installed
(`make test-latest`'s environment)."""

import collections
import importlib.util
import os
import pathlib
import tempfile

import pytest

from jaxcifar import xla_cpu  # imports no JAX

# The suite compiles many small programs and runs most for a few steps: it compiles so
# (xla_cpu.QUICK_COMPILE says how and what that saves), set before JAX starts its CPU backend,
# so that every test process and every process they start (which inherit it) compiles so. A
# level the user set wins. The runs a test compares are compiled alike.
xla_cpu.use_compile_flags(xla_cpu.QUICK_COMPILE)

from jaxcifar import testing  # noqa: E402  (after XLA_FLAGS: it imports JAX)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tensorflow_datasets"

# One persistent XLA cache for the whole suite: both xdist workers and every subprocess they
# start (fit_synthetic.py, the CLIs) compile the same tiny steps, and each compiled once
# instead of in every fresh interpreter. A test that checks caching itself sets its own
# JAXCIFAR_COMPILATION_CACHE. The cache is keyed by the program, flags and devices, so it
# cannot hand a test another program's executable.
TEST_COMPILATION_CACHE = pathlib.Path(tempfile.gettempdir()) / f"jaxcifar-tests-xla-{os.getuid()}"
os.environ.setdefault("JAXCIFAR_COMPILATION_CACHE", str(TEST_COMPILATION_CACHE))
# Every program is cached, however quickly it compiled (JAX skips those under a second by
# default): the suite's fresh processes would otherwise compile the same small evaluation
# and initialisation programs again, each one.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_configure(config):
    import jax

    from jaxcifar import parallel

    parallel.configure_compilation_cache()
    # This process imported JAX (through jaxcifar.testing) before this module set the variable.
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    config.addinivalue_line("markers", "slow: trains on the real data or in fresh processes; "
                                       "`make test-fast` and `make test-latest` leave these out")
    config.addinivalue_line("markers", "heavy: shares a module fixture that trains for half a minute or more; "
                                       "`make test-fast` leaves these out, `make test-latest` runs them")
    config.addinivalue_line("markers", "tf(feature): needs TensorFlow for `feature`; skipped where the `tf` extra "
                                       "is not installed")


# TensorFlow and TFDS come together (the `tf` extra); find_spec looks without importing them.
TENSORFLOW_INSTALLED = all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorflow_datasets"))
# Fixtures that need TensorFlow, and for what: a test that uses one is marked tf(that).
TENSORFLOW_FIXTURES = {"shared_data_dir": "TFDS input (the prepared CIFAR-10)",
                       "exported_both": "the SavedModel export",
                       "quantized": "LiteRT conversion", "airbench_quantized": "LiteRT conversion"}
# Module fixtures that train for half a minute or more (cold): a test that uses one is marked heavy.
HEAVY_FIXTURES = {"peft_runs", "curves", "quantized", "airbench_quantized"}


def pytest_collection_modifyitems(items):
    """Every test that reads the real data is slow (its own @pytest.mark.slow not needed), and
    one that uses a HEAVY_FIXTURES fixture heavy; a test that needs TensorFlow is skipped,
    saying for what, where it is not installed. Modules run in order of their slow tests, most
    first (`slow_modules_first`)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "shared_data_dir" in fixtures:
            item.add_marker(pytest.mark.slow)
        if HEAVY_FIXTURES & set(fixtures):
            item.add_marker(pytest.mark.heavy)
        for fixture in sorted(set(fixtures) & TENSORFLOW_FIXTURES.keys()):
            item.add_marker(pytest.mark.tf(TENSORFLOW_FIXTURES[fixture]))
        needs = item.get_closest_marker("tf")
        if needs and not TENSORFLOW_INSTALLED:
            item.add_marker(pytest.mark.skip(reason=f"needs TensorFlow for {needs.args[0]}; this environment has "
                                                    "no `tf` extra (pip install -e \".[tf]\")"))
    items[:] = slow_modules_first(items)


def slow_modules_first(items: list) -> list:
    """`items`, each module's tests together and in their order, the modules with the most slow
    tests first. pytest-xdist hands out tests in this order as workers free up, so the
    minute-long tests start early and the last ones to finish are short: in file order the
    README workflow (two minutes) came last, and the other worker sat idle for most of it."""
    slow_tests = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    # A stable sort: modules with as many slow tests keep their order, each one's tests together.
    return sorted(items, key=lambda item: -slow_tests[item.module.__name__])


# Modules whose tests share module fixtures that train for half a minute or more. Each
# pytest-xdist worker holds its own module fixtures, so such a module's tests spread over
# both workers trained its runs twice; `pytest_xdist_make_scheduler` sends each of these
# modules to one worker whole, and every other test on its own, as `-n 2` does by default.
# (pytest-xdist's `--dist loadgroup` would do it by mark, but its marks no longer reach the
# scheduler under pytest 9.2, which stopped letting a plugin rename a test.)
SHARED_FIXTURE_MODULES = ("test_peft.py", "test_precision.py", "test_quantize.py", "test_litert.py",
                          "test_reliability.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which `make test` installs
def pytest_xdist_make_scheduler(config, log):
    """For the default `--dist load`: scheduling by module for SHARED_FIXTURE_MODULES, by test
    for the rest. Larger modules are handed out first (pytest-xdist's loadscope order)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if pathlib.PurePath(module).name in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixturesTogether(config, log)


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
