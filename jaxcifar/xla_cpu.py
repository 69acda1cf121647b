"""XLA:CPU flags that jaxcifar sets by default. They only take effect if they are in
`XLA_FLAGS` before JAX starts its CPU backend (importing jax first is fine), which is
why `import jaxcifar` applies them.

Eigen instead of YNNPACK convolutions: on the 2-core machines this project measures on,
XLA's YNNPACK convolution weight gradients make a train step 1.3-1.9x slower than with
Eigen (benchmarks/NOTES.md, on jaxlib 0.10.2). The flag only concerns the CPU backend, so
it is harmless on GPU/TPU. XLA aborts on flags it does not know, so it is only added for the
jaxlib versions where it was checked to exist and to take the convolutions off YNNPACK
(0.10.2, 0.11.2 and 0.12.1, the ends of pyproject.toml's range and the version between;
tests/test_xla_cpu.py checks the installed one). Flags the user already set win, and
`JAXCIFAR_XLA_CPU_DEFAULTS=0` turns all of this off.
"""

from __future__ import annotations

import importlib.metadata
import os

EIGEN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
CHECKED_JAXLIB_PREFIXES = ("0.10.", "0.11.", "0.12.")  # versions on which EIGEN_CONV was checked to exist
OPT_OUT = "JAXCIFAR_XLA_CPU_DEFAULTS"


def default_flags(current: str, jaxlib_version: str) -> list[str]:
    """The flags to append to `current` XLA_FLAGS (pure, for tests)."""
    if "xla_cpu_experimental_ynn_fusion_type" in current or not jaxlib_version.startswith(CHECKED_JAXLIB_PREFIXES):
        return []
    return [EIGEN_CONV]


def configure() -> None:
    if os.environ.get(OPT_OUT, "1") == "0":
        return
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    current = os.environ.get("XLA_FLAGS", "")
    extra = default_flags(current, version)
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


# Compiling fast rather than running fast, for work that compiles many tiny programs and runs
# each once or twice (the device check's dry run): XLA:CPU without LLVM's optimisations and
# with its older fusion emitters compiles a tiny training step 3-6x faster (measured on jaxlib
# 0.10.2). Never a default, and not the test suite's: what it saves in compilation its steps
# lose in execution (the suite took 23 minutes with it, against 19 without, and a scanned
# epoch ran several times slower).
#
# The test suite's middle way, for work that compiles many small programs and runs each for a
# few steps: LLVM's optimisations at level 1 rather than 2, and the older fusion emitters.
# Cold (nothing compiled yet), test_fast.py and test_peft.py took 124 s of CPU at level 1
# against 184 s without; the older emitters then took test_fast.py, test_peft.py and
# test_ssl.py from 254 to 225 s of CPU, and test_train.py, test_quantize.py and
# test_precision.py from 263 to 238 s. Level 0 compiles faster still, but ran test_fast.py's
# scanned-epoch test in 66 s instead of under 11, a net loss. Never a default either: a long
# training wants its steps fast.
OLD_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
QUICK_COMPILE = ("--xla_backend_optimization_level=1", OLD_FUSION_EMITTERS)
FAST_COMPILE = ("--xla_backend_optimization_level=0", OLD_FUSION_EMITTERS)
# XLA aborts on a flag it does not know: the emitters' flag is added only where checked.
OLD_FUSION_EMITTERS_JAXLIB_PREFIXES = ("0.10.",)


def compile_flags(preset: tuple[str, ...], current: str, jaxlib_version: str) -> list[str]:
    """The flags of `preset` (QUICK_COMPILE, FAST_COMPILE) to append to `current` XLA_FLAGS
    (pure, for tests): none where the user set an optimisation level, and the emitters' flag
    only on the jaxlib versions where it was checked to exist."""
    if "xla_backend_optimization_level" in current:
        return []
    checked = jaxlib_version.startswith(OLD_FUSION_EMITTERS_JAXLIB_PREFIXES)
    return [flag for flag in preset if flag != OLD_FUSION_EMITTERS or checked]


def use_compile_flags(preset: tuple[str, ...]) -> None:
    """Add `preset`'s flags (compile_flags) to this process's XLA_FLAGS, which its child
    processes inherit; to be called before JAX starts its CPU backend."""
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    current = os.environ.get("XLA_FLAGS", "")
    if extra := compile_flags(preset, current, version):
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
