"""DARTS candidate ops: shapes, semantics against hand computations, registry errors (the
kernels themselves: tests/test_kernels.py)."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas.spaces.darts import ops
from dnas.spaces.darts.search import search_op


def _x(shape, seed=None):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("name", ops.PRIMITIVES + ("sep_conv_7x7", "conv_7x1_1x7"))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_op_shapes(name, stride, size):
  C = 4
  op = ops.make_op(name, C, stride, affine=True, rngs=nnx.Rngs(0))
  y = op(_x((2, size, size, C)))
  out = -(-size // stride)  # ceil: every stride-2 op halves rounding up
  chex.assert_shape(y, (2, out, out, C))
  assert y.dtype == jnp.float32
  chex.assert_tree_all_finite(y)


@pytest.mark.parametrize("stride", [1, 2])
def test_none_is_zero(stride):
  y = ops.make_op("none", 3, stride, False, nnx.Rngs(0))(_x((2, 5, 5, 3)) + jnp.inf)
  assert not jnp.any(y)


def test_avg_pool_divides_by_in_image_count():
  x = jnp.ones((1, 4, 4, 1)).at[0, 0, 0, 0].set(10.0)
  y = ops.AvgPool(1)(x)
  # Corner window holds 4 in-image pixels (10, 1, 1, 1); padding is not counted.
  np.testing.assert_allclose(y[0, 0, 0, 0], 13.0 / 4, rtol=1e-6)
  # Edge window: 6 pixels, centre window: 9.
  np.testing.assert_allclose(y[0, 0, 1, 0], 15.0 / 6, rtol=1e-6)
  np.testing.assert_allclose(y[0, 1, 1, 0], 18.0 / 9, rtol=1e-6)


def test_factorized_reduce_odd_size_pads_second_path():
  fr = ops.FactorizedReduce(2, 4, affine=False, rngs=nnx.Rngs(0))
  x = jnp.abs(_x((3, 7, 7, 2))) + 0.1
  chex.assert_shape(fr(x), (3, 4, 4, 4))
  fr = ops.FactorizedReduce(2, 4, affine=False, rngs=nnx.Rngs(0))
  fr.eval()  # untouched running stats (0, 1): BN is the identity up to eps
  y = fr(x)
  k2 = fr.conv_2.kernel[0, 0]
  # Second path reads x[1::2, 1::2]; the last row/column (beyond the image) is zero.
  np.testing.assert_allclose(y[:, :3, :3, 2:], jnp.einsum("nhwc,co->nhwo", x[:, 1::2, 1::2], k2)
                             / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y[:, 3, :, 2:], 0.0, atol=1e-7)


def test_batch_norm_matches_pytorch_semantics():
  bn = ops.BatchNorm(3, affine=True)
  x = _x((4, 5, 5, 3)) * 2 + 1
  y = bn(x)
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  n = 4 * 5 * 5
  np.testing.assert_allclose(bn.mean.get_value(), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var.get_value(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  bn.eval()
  np.testing.assert_allclose(bn(x), (x - bn.mean.get_value()) / np.sqrt(bn.var.get_value() + 1e-5),
                             rtol=1e-5, atol=1e-5)


def test_search_ops_add_bn_after_pooling():
  op = search_op("max_pool_3x3", 4, 1, nnx.Rngs(0))
  assert isinstance(op.layers[1], ops.BatchNorm) and op.layers[1].scale is None
  y = op(_x((8, 6, 6, 4)))
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-5)


def test_unknown_op_lists_valid_ones():
  with pytest.raises(ValueError, match=r"unknown op 'conv_9x9'; valid ops: none, avg_pool_3x3"):
    ops.make_op("conv_9x9", 4, 1, True, nnx.Rngs(0))


def test_weights_initialised_like_pytorch():
  conv = ops.Conv1x1(64, 32, rngs=nnx.Rngs(0))
  w = np.asarray(conv.kernel.get_value())
  assert np.abs(w).max() <= 64 ** -0.5 and np.abs(w).max() > 0.9 * 64 ** -0.5
