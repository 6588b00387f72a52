"""Small helpers shared across dnas."""

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from dnas import cpu

# `config.dtype`: the activations' dtype. Weights, alphas, BatchNorm statistics and
# optimiser states stay float32 (mixed precision). "float32" casts nothing (None).
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The activations' dtype of a config (`dtype`, default float32) for the step makers."""
  return DTYPES[config.get("dtype", "float32")]


def cast_floating(tree, dtype):
  """Casts the floating-point leaves of `tree` to `dtype` (others, or all if `dtype` is
  None, unchanged)."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def at_least_float32(x: jax.Array) -> jax.Array:
  """bfloat16 logits -> float32 for the loss; float32 and float64 unchanged."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# `config.deterministic`: GPU kernels without atomics (bitwise-reproducible resumes there).
XLA_DETERMINISTIC_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def configure_xla(deterministic: bool = False) -> None:
  """Adds `dnas.cpu.xla_cpu_flags()` (and with `deterministic`, `XLA_DETERMINISTIC_FLAGS`) to
  $XLA_FLAGS, unless the user set them. Call before the first JAX computation: the entry
  points and the test suite do; library users may export XLA_FLAGS themselves. Flags of
  another backend are ignored by each backend."""
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in cpu.xla_cpu_flags() + (XLA_DETERMINISTIC_FLAGS if deterministic else ()):
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags


def count_params(module: nnx.Module, exclude: str | None = "auxiliary_head") -> int:
  """Number of `nnx.Param` scalars (ArchParam and BatchStat are not counted), as the
  reference's `count_parameters_in_MB` * 1e6: leaves whose path contains `exclude` are
  skipped. Works on abstract modules from `nnx.eval_shape`."""
  total = 0
  for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    if exclude is not None and exclude in map(str, path):
      continue
    total += math.prod(v.get_value().shape)
  return total
