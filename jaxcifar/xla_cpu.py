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
