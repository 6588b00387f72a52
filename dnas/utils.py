"""Small helpers shared across dnas."""

import ctypes
import math
import os
import threading
import time

import jax
import jax.numpy as jnp
from flax import nnx

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


# XLA:CPU's default concurrency-optimised scheduler keeps many more buffers alive.
# Measured on 3 stacked CIFAR search cells (batch 32, gradient step): temporary memory
# 4.43 -> 2.13 GiB and step 4.7-5.2 -> 3.2-3.5 s with it off; `jax.checkpoint` saves
# memory only with it off. Passing it as a jit `compiler_options` has no effect in
# jax 0.10.2; it must be in XLA_FLAGS before the backend starts.
XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


# `config.deterministic`: GPU kernels without atomics (bitwise-reproducible resumes there).
XLA_DETERMINISTIC_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def configure_xla(deterministic: bool = False) -> None:
  """Adds `XLA_CPU_FLAGS` (and with `deterministic`, `XLA_DETERMINISTIC_FLAGS`) to
  $XLA_FLAGS, unless the user set them. Call before the first JAX computation: the entry
  points and the test suite do; library users may export XLA_FLAGS themselves. Flags of
  another backend are ignored by each backend."""
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in XLA_CPU_FLAGS + (XLA_DETERMINISTIC_FLAGS if deterministic else ()):
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags


def release_free_memory() -> None:
  """glibc: returns freed heap pages to the OS (`malloc_trim(0)`); elsewhere nothing.

  XLA:CPU compilation of a supernet peaks at several GiB and leaves its freed memory
  resident in the heap (5.1 -> 2.6 GiB resident after trimming, CIFAR-10 search step).
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


# (name, trace_s, compile_s) of every program `compile_then_trim` compiled, in order:
# what `scripts/bench_step.py` reports as compile time.
COMPILE_LOG: list[dict] = []


def compile_then_trim(jitted):
  """`jitted` (a `jax.jit` function) compiled ahead of its first call for each argument
  signature (tree structure, shapes, dtypes, shardings), after which the compiler's
  freed memory goes back to the OS (`release_free_memory`). A function without `lower`
  (a step made of such programs) is returned as it is.

  Compiling on the first call instead would leave that memory resident while the
  first execution allocates its buffers beside it. At CIFAR-10 search shapes on CPU this
  took the first-order step's peak RSS from 11.74 to 9.24 GiB (BUILD_NOTES.md).
  """
  if not hasattr(jitted, "lower"):
    return jitted
  compiled = {}
  lock = threading.Lock()  # one compile per signature, also across threads

  def compile_for(args):
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((tuple(jnp.shape(x)),
                           x.dtype if hasattr(x, "dtype") else jnp.result_type(x),
                           getattr(x, "sharding", None)) for x in leaves))
    with lock:
      if key not in compiled:
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        compiled[key] = lowered.compile()
        COMPILE_LOG.append(dict(name=getattr(jitted, "__name__", "?"), trace_s=t1 - t0,
                                compile_s=time.perf_counter() - t1))
        release_free_memory()
    return compiled[key]

  def call(*args):
    return compile_for(args)(*args)
  # Compiles for arguments like these (arrays or `jax.ShapeDtypeStruct`s with their
  # shardings) without running: a later call with such arguments finds it compiled.
  call.precompile = lambda *args: compile_for(args) and None
  return call


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


def evaluate(eval_fn, batches) -> tuple[float, float]:
  """Mean loss and accuracy over batches.

  Args:
    eval_fn: batch -> (sum of per-example losses, number correct, number of examples)
      over the global batch (padding excluded).
    batches: iterable of batches for eval_fn.

  Returns:
    (mean loss, accuracy) over all examples.
  """
  loss, correct, n = 0.0, 0.0, 0.0
  for batch in batches:
    l, c, k = eval_fn(batch)
    loss, correct, n = loss + float(l), correct + float(c), n + float(k)
  return loss / n, correct / n
