"""Times and profiles the gradient of one DARTS search cell at CIFAR-10 search shapes.

python scripts/profile_cell.py [--wrt=weights|alphas] [--reduction]

Batch 64, 32x32 inputs, C=16 (C=32 for a reduction cell). Prints compile time, the median
of 3 steps and, from a `jax.profiler` trace of one more step, the XLA kernels grouped by
fusion kind with their summed time (both CPU threads counted).
"""

import collections
import glob
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from dnas import utils
from dnas.spaces.darts import search

_WRT = flags.DEFINE_enum("wrt", "weights", ["weights", "alphas"], "Gradient with respect to.")
_REDUCTION = flags.DEFINE_bool("reduction", False, "Profile a reduction cell.")


def kernel_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """(summed ns, call count) per XLA kernel kind in the `jax.profiler` trace in
  `trace_dir`: the events on XLA:CPU's Eigen threads, numbered kernels (`fusion.12`)
  grouped by kind (`fusion`)."""
  path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  total, count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue
      for ev in line.events:
        if ev.name != "ThunkExecutor::Execute" and not ev.name.startswith("end:"):
          kind = re.sub(r"\.\d+$", "", ev.name)
          total[kind] += ev.duration_ns
          count[kind] += 1
  return total, count


def main(argv):
  del argv
  utils.configure_xla()
  red = _REDUCTION.value
  C, C_in = (32, 64) if red else (16, 48)
  cell = search.Cell(4, 4, C_in, C_in, C, red, False, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
  rng = np.random.default_rng(0)
  s0 = jnp.asarray(rng.standard_normal((64, 32, 32, C_in)), jnp.float32)
  s1 = jnp.asarray(rng.standard_normal((64, 32, 32, C_in)), jnp.float32)
  weights = jax.nn.softmax(jnp.asarray(rng.standard_normal((14, 8)), jnp.float32))

  def loss(params, weights):
    y = nnx.merge(graphdef, params, rest, copy=True)(s0, s1, weights)
    return jnp.mean(y * y)

  grad = jax.jit(jax.grad(loss, argnums=0 if _WRT.value == "weights" else 1))
  t = time.perf_counter()
  compiled = grad.lower(params, weights).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(params, weights))
  times = []
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(compiled(params, weights))
    times.append(time.perf_counter() - t)
  print(f"{'reduction' if red else 'normal'} cell, gradient wrt {_WRT.value}: "
        f"compile {compile_s:.1f} s, step median {np.median(times):.3f} s "
        f"({', '.join(f'{v:.3f}' for v in times)})")
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      jax.block_until_ready(compiled(params, weights))
    total, count = kernel_times(d)
  print(f"kernel time {sum(total.values()) / 1e9:.2f} s in {sum(count.values())} kernels")
  for kind, ns in total.most_common(10):
    print(f"  {ns / 1e6:9.1f} ms {count[kind]:5d}  {kind}")


if __name__ == "__main__":
  app.run(main)
