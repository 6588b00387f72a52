"""Run by tests/test_parallel.py in a subprocess with 8 host devices: one search step on a
1-device mesh, an 8-device data mesh and a 4x2 data x fsdp mesh. Prints one JSON line
{case: {what: max relative difference to the 1-device run}}.

`first` is compared in float32. The second-order steps are compared in float64: their
hypergradient on this tiny supernet is ill-conditioned enough that float32 rounding alone
moves it by ~1e-4 relative on one device (measured against float64), whatever the mesh.
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from dnas import bilevel, hypergrad, parallel, utils  # noqa: E402
from dnas.spaces import darts  # noqa: E402


def run(order, mesh, dtype, batch_pair, fsdp_min_size=2**14):
  # Small enough to compile in seconds: one node per cell, four kinds of op.
  net = darts.Network(2, 10, 3, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                      primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                      rngs=nnx.Rngs(0))
  w_tx = bilevel.make_w_tx(0.05)
  # SGD, not Adam, on alphas here: Adam's first step is ~lr * sign(g) and would turn
  # rounding differences in near-zero gradient entries into full-size steps.
  a_tx = optax.sgd(1.0)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                       state)
  shardings = (parallel.state_shardings(state, mesh, fsdp_min_size),
               parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  hg = hypergrad.from_order(order, bilevel.make_w_tx(0.05, grad_clip=None))
  step = bilevel.make_search_step(graphdef, w_tx, a_tx, hypergrad=hg,
                                  execution=bilevel.Execution(shardings=shardings))
  bt, bv = ({"image": b["image"].astype(dtype), "label": b["label"]} for b in batch_pair)
  state, metrics = step(state, parallel.put_batch(bt, mesh), parallel.put_batch(bv, mesh))
  sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(shardings[0]))
  out = jax.device_get(dict(losses=[metrics["w_loss"], metrics["a_loss"]], params=state.params,
                            alphas=state.alphas, batch_stats=state.batch_stats))
  return out, sharded


def rel(a, b, atol):
  """Max over leaves of max|a - b| / (atol + max|b|): error relative to each array's scale."""
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                   / (atol + np.max(np.abs(np.asarray(y, np.float64)))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
  pair = [{"image": rng.standard_normal((16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(2)]
  cases = {"first_f32": ("first", jnp.float32), "second_f64": ("second", jnp.float64),
           "second_fd_f64": ("second_fd", jnp.float64)}
  out = {}
  for name, (order, dtype) in cases.items():
    ref, _ = run(order, parallel.make_mesh(1), dtype, pair)
    meshes = {"data8": (parallel.make_mesh(8), 2**14)}
    if order == "first":
      meshes["data4_fsdp2"] = (parallel.make_mesh(8, fsdp=2), 16)
    atol = 1e-6 if dtype == jnp.float32 else 1e-12
    for mesh_name, (mesh, min_size) in meshes.items():
      got, sharded = run(order, mesh, dtype, pair, min_size)
      out[f"{name}/{mesh_name}"] = {k: rel(got[k], ref[k], atol) for k in ref}
      out[f"{name}/{mesh_name}"]["sharded_leaves"] = sharded
  print(json.dumps(out))


if __name__ == "__main__":
  utils.configure_xla()
  main()
