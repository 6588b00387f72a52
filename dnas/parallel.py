"""Data parallelism over a device mesh (every local device, every host).

The search and training steps stay single-device functions; `jax.jit` with shardings
runs them as one SPMD program (GSPMD) over a `jax.sharding.Mesh` with two axes:

  data  the batch is split over it; state is replicated along it
  fsdp  the batch is split over it too, and large weights (and their optimiser state)
        are sharded along it, ZeRO-3 / FSDP style, for supernets that do not fit a device

jit's semantics are global, so a BatchNorm mean is over the global batch: the search
computes the same thing on 1 device or 64 (tested to float32 tolerance).

Multi-host: `initialize_distributed()` calls `jax.distributed.initialize` (flags or the
usual cluster environment variables); each process then feeds only its slice of each
global batch, `put_batch` assembles the global array.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def initialize_distributed(coordinator: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
  """`jax.distributed.initialize` for a multi-host run, before any other JAX call.

  With no arguments, JAX reads the cluster environment (Slurm, TPU VMs, Kubernetes,
  or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); on a single machine
  with none of those it does nothing.
  """
  kwargs = {}
  if coordinator:
    kwargs["coordinator_address"] = coordinator
  if num_processes:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  if kwargs or several_processes(os.environ):
    jax.distributed.initialize(**kwargs)


def several_processes(env) -> bool:
  """Whether the environment `env` describes a job of more than one process: a single
  `python` inside an `sbatch` allocation (SLURM_JOB_ID, one task) or on one TPU VM host
  must not wait for peers that never start."""
  def count(name):
    try:
      return int(env.get(name, "1").split("(")[0])  # Slurm writes e.g. "4(x2)"
    except ValueError:
      return 1
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  if count("SLURM_NTASKS") > 1 or count("SLURM_NPROCS") > 1:
    return True
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return True
  return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def make_mesh(num_devices: int = 0, fsdp: int = 1) -> jax.sharding.Mesh:
  """Mesh over the first `num_devices` devices (0: all), shaped (data, fsdp)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"asked for {n} devices, {len(devices)} available")
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"fsdp={fsdp} must divide the device count {n}")
  return jax.sharding.Mesh(np.asarray(devices[:n]).reshape(n // fsdp, fsdp), AXES)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def _leaf_sharding(x, mesh, min_size):
  """FSDP: shard the largest axis divisible by the fsdp size; small arrays replicated."""
  k = mesh.shape["fsdp"]
  shape = getattr(x, "shape", ())
  if k > 1 and math.prod(shape) >= min_size:
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
      if shape[axis] % k == 0:
        spec = [None] * len(shape)
        spec[axis] = "fsdp"
        return NamedSharding(mesh, P(*spec))
  return NamedSharding(mesh, P())


def state_shardings(state, mesh: jax.sharding.Mesh, fsdp_min_size: int = 2**14):
  """Shardings for a state pytree: replicated, or FSDP-sharded when the mesh has fsdp > 1."""
  return jax.tree.map(lambda x: _leaf_sharding(x, mesh, fsdp_min_size), state)


def put_state(state, shardings):
  """Places a state pytree (the same values on every process) with `shardings`."""
  def put(x, s):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = put(jax.random.key_data(x), s)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
  return jax.tree.map(put, state, shardings)


def put_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """This process's slice of a global batch (numpy) -> global arrays split over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def process_slice(global_batch_size: int) -> tuple[int, int]:
  """(offset, size) of this process's slice of each global batch."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"batch size {global_batch_size} is not divisible by {n} processes")
  size = global_batch_size // n
  return jax.process_index() * size, size


def gather(tree):
  """Any arrays -> numpy on every process, sharded ones all-gathered across processes (a
  collective: every process calls it); PRNG keys stay keys. For state that changes shape
  (DrNAS's widening between stages)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(get(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if (isinstance(x, jax.Array) and not x.is_fully_addressable
        and not x.sharding.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return to_host(x)
  return jax.tree.map(get, tree)


def to_host(tree):
  """Replicated (or single-process) arrays -> numpy, on every process. `device_get`
  refuses arrays that span processes; a replicated one has its full value in any
  local shard."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError(f"to_host needs a replicated array, got sharding {x.sharding}")
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def stacked_sharding(sharding):
  """The sharding of a stack of leaves that each have `sharding` (a new leading axis):
  P(a, b) -> P(None, a, b); a fully replicated one unchanged."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, P(None, *sharding.spec))
  if sharding.is_fully_replicated:
    return sharding
  raise ValueError(f"cannot stack leaves with sharding {sharding}: neither named nor "
                   f"fully replicated")
