"""Devices, processes and shardings: one data-parallel mesh axis, `data`; and what a process
sets up before it trains (the distributed runtime, the on-disk compilation cache).

Parameters are replicated; batches are split along their leading axis. `jax.jit` with
`NamedSharding` handles 1..N devices and multi-host runs with the same code (pmap is in
maintenance mode). Under jit over this mesh BatchNorm statistics are computed over the
global batch, exactly as on one device.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def configure_compilation_cache() -> None:
    """Persist compiled steps across runs (a resumed or repeated run skips recompiling):
    $JAXCIFAR_COMPILATION_CACHE, default ~/.cache/jaxcifar/xla; set it to '' to disable."""
    cache_dir = os.environ.get("JAXCIFAR_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache/jaxcifar/xla"))
    if cache_dir and jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", cache_dir)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run. Must run before anything touches devices. With no
    arguments JAX auto-detects TPU pods and SLURM/Open MPI clusters."""
    # CPU processes need a collectives backend for cross-process all-reduces (no-op elsewhere).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None and num_processes is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def make_mesh() -> Mesh:
    # Auto axis types: the compiler propagates shardings through the step (as in the Flax
    # examples); Explicit "sharding in types" would demand annotations on every vmap input.
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the `data` axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def steps_to_global(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's (steps, local batch) rows -> a global (steps, batch) array, each step's
    batch sharded over the `data` axis (for an epoch run as one scan)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "data")), local_rows)


def max_over_processes(value: int) -> int:
    """The largest of every process's `value`. A collective: every process must call it at
    the same point of the program. With one process, `value` itself, with no device work."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))
