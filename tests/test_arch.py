"""MixedOp and ArchParam, standalone in a small non-DARTS model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 4)), jnp.float32)
  expected = sum(w[k] * op(x) for k, op in enumerate(net.block.ops))
  chex.assert_trees_all_close(net.block(x), expected, atol=1e-6)


def test_filters_separate_alphas_from_weights_and_optimizers_respect_them():
  net = TinyNet(nnx.Rngs(0))
  alphas = nnx.state(net, ArchParam)
  assert sorted(jax.tree.map(jnp.shape, jax.tree.leaves(alphas))) == [(2,), (3,)]
  assert not any(isinstance(v, ArchParam) for _, v in nnx.to_flat_state(nnx.state(net, nnx.Param)))
  w_opt = nnx.Optimizer(net, optax.sgd(0.1), wrt=nnx.Param)
  a_opt = nnx.Optimizer(net, optax.adam(0.1), wrt=ArchParam)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6, 6, 1)), jnp.float32)
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
  rng = np.random.default_rng(3)
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


def test_channel_shuffle_is_the_reference_permutation():
  groups, c = 4, 12
  x = jnp.broadcast_to(jnp.arange(c, dtype=jnp.float32), (1, 2, 2, c))
  out = np.asarray(dnas.arch.channel_shuffle(x, groups)[0, 0, 0])
  # PC-DARTS: view (groups, C / groups), transpose, flatten.
  expected = np.arange(c).reshape(groups, c // groups).T.ravel()
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(np.sort(out), np.arange(c))  # a permutation


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_mixed_op_mixes_exactly_c_over_k_channels(stride):
  k, c, h = 4, 16, 7
  seen = []

  def op(scale):
    def f(x):
      seen.append(x.shape[-1])
      y = x[:, ::stride, ::stride] if stride == 2 else x
      return scale * y
    return Act(f)

  mixed = dnas.arch.PartialMixedOp([op(1.0), op(3.0)], k, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, h, h, c)), jnp.float32)
  w = jnp.asarray([0.25, 0.75])
  out = mixed(x, w)
  assert seen == [c // k, c // k]
  # Undo the shuffle: the first C/K channels are the mix, the rest the bypass.
  inverse = np.argsort(np.asarray(dnas.arch.channel_shuffle(
      jnp.arange(c, dtype=jnp.float32)[None, None, None], k)[0, 0, 0]).astype(int))
  unshuffled = np.asarray(out)[..., inverse]
  xs = x[:, ::stride, ::stride] if stride == 2 else x
  np.testing.assert_allclose(unshuffled[..., :c // k], (0.25 + 2.25) * xs[..., :c // k], rtol=1e-6)
  bypass = x[..., c // k:]
  if stride == 2:  # 2x2 max pooling, the odd border padded: ceil(7 / 2) = 4
    padded = np.pad(np.asarray(bypass), ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    bypass = padded.reshape(2, 4, 2, 4, 2, c - c // k).max(axis=(2, 4))
  np.testing.assert_array_equal(unshuffled[..., c // k:], bypass)


def test_node_softmax_normalises_each_node():
  betas = jnp.asarray(np.random.default_rng(5).standard_normal(14), jnp.float32)
  w = np.asarray(dnas.arch.node_softmax(betas, 4))
  starts = [0, 2, 5, 9, 14]
  for s, e in zip(starts[:-1], starts[1:]):
    np.testing.assert_allclose(w[s:e].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[s:e], jax.nn.softmax(betas[s:e]), rtol=1e-6)
  with pytest.raises(ValueError, match="13 edge logits, 4 nodes need 14"):
    dnas.arch.node_softmax(betas[:13], 4)


def test_gumbel_hard_samples_are_one_hot_with_straight_through_gradient():
  logits = jnp.asarray(np.random.default_rng(6).standard_normal((14, 8)), jnp.float32)
  key = jax.random.key(0)
  hard = dnas.arch.gumbel_softmax(key, logits, 0.5, hard=True)
  np.testing.assert_array_equal(np.sort(np.asarray(hard), axis=-1)[:, :-1], 0.0)
  np.testing.assert_allclose(np.asarray(hard).max(axis=-1), 1.0, rtol=1e-6)
  soft = dnas.arch.gumbel_softmax(key, logits, 0.5)
  np.testing.assert_allclose(np.asarray(soft).sum(-1), 1.0, rtol=1e-5)
  # Same noise: the hard sample is the soft sample's argmax.
  np.testing.assert_array_equal(np.argmax(hard, -1), np.argmax(soft, -1))
  c = jnp.asarray(np.random.default_rng(7).standard_normal((14, 8)), jnp.float32)
  g = jax.grad(lambda l: jnp.sum(dnas.arch.gumbel_softmax(key, l, 0.5, hard=True) * c))(logits)
  assert np.all(np.isfinite(g)) and np.abs(np.asarray(g)).sum() > 0


def test_sampled_mixed_op_runs_only_the_sampled_op():
  ops = [Act(lambda x: 2.0 * x), Act(jnp.tanh), Act(lambda x: x ** 2)]
  mixed = MixedOp(ops, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 3, 3, 4)), jnp.float32)
  hard = jnp.asarray([0.0, 1.0, 0.0])
  np.testing.assert_allclose(mixed(x, hard, sampled=True), jnp.tanh(x), rtol=1e-6)
  # GDAS: y = h_k op_k(x) + sum_{j != k} h_j; the other h_j get the summed cotangent.
  g = jax.grad(lambda h: jnp.sum(mixed(x, h, sampled=True)))(hard)
  # The tanh sum cancels towards 0: its float32 rounding is x.size ulps of the terms, so atol.
  np.testing.assert_allclose(g, [x.size, float(jnp.sum(jnp.tanh(x))), x.size], rtol=1e-5,
                             atol=x.size * float(jnp.finfo(jnp.float32).eps))
  jaxpr = str(jax.make_jaxpr(lambda h: mixed(x, h, sampled=True))(hard))
  assert "cond[" in jaxpr  # one branch per op, only the selected one executes


def test_gumbel_search_step_moves_alphas():
  # Hard sampling (the soft one differs only by the weights, tested above).
  from dnas import bilevel, relaxation
  from dnas.spaces import darts
  for hard in (True,):
    net = darts.Network(2, 3, 2, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                        primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                        relaxation="gumbel", gumbel_hard=hard, rngs=nnx.Rngs(0))
    w_tx, a_tx = bilevel.make_w_tx(0.05), bilevel.make_a_tx(lr=0.01)
    graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(1))
    step = jax.jit(bilevel.make_search_step(
        graphdef, w_tx, a_tx, relaxation=relaxation.gumbel(lambda _: 1.0),
        execution=bilevel.Execution(jit=False)))
    rng = np.random.default_rng(9)
    batch = lambda: dict(image=jnp.asarray(rng.standard_normal((4, 6, 6, 1)), jnp.float32),
                         label=jnp.asarray(rng.integers(0, 3, 4), jnp.int32))
    new, metrics = step(state, batch(), batch())
    assert np.isfinite(float(metrics["a_loss"])) and float(metrics["a_grad_norm"]) > 0
    assert not np.array_equal(new.alphas["alphas_normal"].get_value(),
                              state.alphas["alphas_normal"].get_value())
