"""Compile time and host time per call of a jitted update of many small leaves, carried
as separate leaves or packed into flat buffers (why `loop.Flat` stacks only off the CPU).

python experiments/state_packing/bench_state_packing.py --leaves=1000 --per_buffer=0  # separate leaves
python experiments/state_packing/bench_state_packing.py --leaves=1000 --per_buffer=64  # 64 a buffer
python experiments/state_packing/bench_state_packing.py --leaves=1000 --per_buffer=1000  # one buffer

Leaves have random shapes of 1-3 axes of length 1-19 (seeded); the update adds a scalar
to every leaf; the state is donated. Prints one JSON line.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_LEAVES = flags.DEFINE_integer("leaves", 1000, "Number of leaves.")
_PER_BUFFER = flags.DEFINE_integer("per_buffer", 0, "Leaves packed per flat buffer (0: none).")


def main(argv):
  del argv
  n, k = _LEAVES.value, _PER_BUFFER.value
  rng = np.random.default_rng(0)
  shapes = [tuple(int(v) for v in rng.integers(1, 20, size=rng.integers(1, 4))) for _ in range(n)]
  if k:
    groups = [list(range(i, min(i + k, n))) for i in range(0, n, k)]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(bufs):
      out = []
      for g, b in zip(groups, bufs):
        offset = 0
        for i in g:
          out.append(b[offset:offset + sizes[i]].reshape(shapes[i]))
          offset += sizes[i]
      return out

    def pack(leaves):
      return [jnp.concatenate([leaves[i].ravel() for i in g]) for g in groups]
    fn = jax.jit(lambda b, x: (pack([a + x for a in unpack(b)]), x), donate_argnums=0)
    state = [jnp.asarray(rng.normal(size=sum(sizes[i] for i in g)), jnp.float32) for g in groups]
  else:
    fn = jax.jit(lambda leaves, x: ([a + x for a in leaves], x), donate_argnums=0)
    state = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  x = jnp.float32(0)
  t0 = time.perf_counter()
  lowered = fn.lower(state, x)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  state, _ = compiled(state, x)
  times = []
  for _ in range(20):
    t = time.perf_counter()
    state, _ = compiled(state, x)
    times.append(time.perf_counter() - t)
  jax.block_until_ready(state)
  print(json.dumps(dict(leaves=n, per_buffer=k, buffers=len(state), trace_s=round(t1 - t0, 1),
                        compile_s=round(t2 - t1, 1),
                        call_ms=round(1e3 * float(np.median(times)), 3))))


if __name__ == "__main__":
  app.run(main)
