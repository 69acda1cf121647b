"""`import jaxcifar` selects Eigen instead of YNNPACK convolutions on XLA:CPU."""

import os
import subprocess
import sys

import pytest

from jaxcifar import xla_cpu

CONV_USES_YNN = """
import jaxcifar, jax, jax.numpy as jnp
x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 64))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print("__ynn_fusion" in jax.jit(conv).lower(x, w).compile().as_text())
"""


def conv_uses_ynn(**env) -> bool:
    env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
    out = subprocess.run([sys.executable, "-c", CONV_USES_YNN], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def test_import_turns_ynnpack_convolutions_off_unless_opted_out():
    clean = {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    assert not conv_uses_ynn(**clean, JAXCIFAR_XLA_CPU_DEFAULTS=None)
    assert conv_uses_ynn(**clean, JAXCIFAR_XLA_CPU_DEFAULTS="0")  # so the flag is what made the difference


def test_user_flags_win_and_unchecked_jaxlib_versions_get_nothing():
    assert xla_cpu.default_flags("", "0.10.2") == [xla_cpu.EIGEN_CONV]
    assert xla_cpu.default_flags("--xla_cpu_experimental_ynn_fusion_type=", "0.10.2") == []
    assert xla_cpu.default_flags("--xla_force_host_platform_device_count=8", "0.10.2") == [xla_cpu.EIGEN_CONV]
    assert xla_cpu.default_flags("", "0.13.0") == []


@pytest.mark.parametrize("preset", [xla_cpu.QUICK_COMPILE, xla_cpu.FAST_COMPILE], ids=["quick", "fast"])
def test_compile_flags_are_added_once_and_the_emitters_flag_only_where_checked(preset):
    assert xla_cpu.compile_flags(preset, "", "0.10.2") == list(preset)
    assert xla_cpu.compile_flags(preset, " ".join(preset), "0.10.2") == []
    assert xla_cpu.compile_flags(preset, "--xla_backend_optimization_level=2", "0.10.2") == []  # the user's own wins
    assert xla_cpu.compile_flags(preset, "", "0.12.1") == [preset[0]]  # an optimisation level exists everywhere
