"""MixedOp and ArchParam, standalone in a small non-DARTS model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dnas
from dnas.arch import ArchParam, MixedOp


class Act(nnx.Module):
  def __init__(self, fn):
    self.fn = fn

  def __call__(self, x):
    return self.fn(x)


class TinyNet(nnx.Module):
  """A researcher's own model: conv -> searched choice of kernel size -> searched activation."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.block = MixedOp([nnx.Conv(4, 4, (k, k), rngs=rngs) for k in (1, 3, 5)], rngs=rngs)
    self.act = MixedOp([Act(jax.nn.relu), Act(jnp.tanh)], rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(self.act(self.block(self.stem(x))).mean((1, 2)))


def test_mixed_op_weights_sum_to_one_and_mix():
  net = TinyNet(nnx.Rngs(0))
  w = net.block.weights()
  np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-6)
  x = jnp.asarray(np.random.default_rng().standard_normal((2, 6, 6, 4)), jnp.float32)
  expected = sum(w[k] * op(x) for k, op in enumerate(net.block.ops))
  chex.assert_trees_all_close(net.block(x), expected, atol=1e-6)


def test_filters_separate_alphas_from_weights_and_optimizers_respect_them():
  net = TinyNet(nnx.Rngs(0))
  alphas = nnx.state(net, ArchParam)
  assert sorted(jax.tree.map(jnp.shape, jax.tree.leaves(alphas))) == [(2,), (3,)]
  assert not any(isinstance(v, ArchParam) for _, v in nnx.to_flat_state(nnx.state(net, nnx.Param)))
  w_opt = nnx.Optimizer(net, optax.sgd(0.1), wrt=nnx.Param)
  a_opt = nnx.Optimizer(net, optax.adam(0.1), wrt=ArchParam)
  x = jnp.asarray(np.random.default_rng().standard_normal((4, 6, 6, 1)), jnp.float32)
  y = jnp.array([0, 1, 2, 0])
  loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

  before_w, before_a = nnx.state(net, nnx.Param), nnx.state(net, ArchParam)
  before_w, before_a = jax.tree.map(jnp.copy, before_w), jax.tree.map(jnp.copy, before_a)
  a_opt.update(net, nnx.grad(loss, argnums=nnx.DiffState(0, ArchParam))(net))
  chex.assert_trees_all_equal(nnx.state(net, nnx.Param), before_w)
  assert not np.allclose(net.block.alpha.get_value(), before_a["block"]["alpha"].get_value())

  before_a = jax.tree.map(jnp.copy, nnx.state(net, ArchParam))
  w_opt.update(net, nnx.grad(loss)(net))
  chex.assert_trees_all_equal(nnx.state(net, ArchParam), before_a)
  assert net.block.choice() in (0, 1, 2)


def test_batched_mixed_ops_equals_plain_sum():
  from dnas.spaces.darts import PRIMITIVES
  from dnas.spaces.darts.search import search_op
  rngs = nnx.Rngs(1)
  edges = [MixedOp([search_op(p, 3, 1, rngs) for p in PRIMITIVES], own_alpha=False)
           for _ in range(3)]
  rng = np.random.default_rng()
  xs = [jnp.asarray(rng.standard_normal((4, 5, 5, 3)), jnp.float32) for _ in range(3)]
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, len(PRIMITIVES))), jnp.float32))
  plain = sum(e(x, wi) for e, x, wi in zip(edges, xs, w))
  plain_stats = jax.tree.map(jnp.copy, [nnx.state(e, nnx.BatchStat) for e in edges])
  # Same initial weights and statistics (same seed), run as one vmapped group.
  rngs = nnx.Rngs(1)
  edges2 = [MixedOp([search_op(p, 3, 1, rngs) for p in PRIMITIVES], own_alpha=False)
            for _ in range(3)]
  batched = dnas.arch.batched_mixed_ops(edges2, xs, w)
  chex.assert_trees_all_close(batched, plain, atol=1e-5)
  chex.assert_trees_all_close([nnx.state(e, nnx.BatchStat) for e in edges2], plain_stats,
                              atol=1e-6)
