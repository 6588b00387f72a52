"""DARTS candidate ops: shapes, semantics against XLA/hand computations, registry errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from dnas import autodiff
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


def test_max_pool_ignores_padding():
  y = ops.MaxPool(2)(-jnp.ones((1, 4, 4, 2)))
  np.testing.assert_array_equal(y, -jnp.ones((1, 2, 2, 2)))


def _depthwise_pair(stride, dilation, pad):
  """(XLA's grouped conv, ours) as functions of (x, kernel)."""
  ref = lambda x, w: lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  return ref, lambda x, w: ops.depthwise_conv2d(x, w, stride, dilation, pad)


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 1, 2)])
def test_depthwise_conv_matches_xla_conv(k, stride, dilation):
  C, pad = 5, dilation * (k - 1) // 2
  x, w = _x((2, 9, 9, C)), _x((k, k, 1, C))
  ref, ours = _depthwise_pair(stride, dilation, pad)
  chex.assert_trees_all_close(ours(x, w), ref(x, w), atol=1e-5)
  # First and second derivatives (the second-order search differentiates twice).
  f = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  chex.assert_trees_all_close(jax.grad(f(ours), (0, 1))(x, w), jax.grad(f(ref), (0, 1))(x, w),
                              atol=1e-4)
  gg = lambda conv: jax.grad(lambda w: jnp.sum(jax.grad(f(conv))(x, w) ** 2))(w)
  chex.assert_trees_all_close(gg(ours), gg(ref), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("k,stride,dilation", [(5, 1, 1), (3, 2, 2)])
def test_depthwise_kernel_gradient_differentiates_in_x(k, stride, dilation):
  # The exact hypergradient differentiates the weight gradient in the input too.
  C, pad = 3, dilation * (k - 1) // 2
  x, w = _x((2, 8, 8, C)), _x((k, k, 1, C))
  ref, ours = _depthwise_pair(stride, dilation, pad)
  gx = lambda conv: jax.grad(
      lambda x: jnp.sum(jax.grad(lambda w: jnp.sum(jnp.sin(conv(x, w))))(w) ** 2))(x)
  chex.assert_trees_all_close(gx(ours), gx(ref), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 2)])
def test_depthwise_conv_forward_over_reverse(k, stride, dilation):
  # order="second" takes a jvp of the gradient, traced inside forward_mode_autodiff
  # (JAX refuses forward mode over a custom_vjp function whose inputs it alone traces).
  C, pad = 3, dilation * (k - 1) // 2
  x, w, dx, dw = _x((2, 8, 8, C)), _x((k, k, 1, C)), _x((2, 8, 8, C)), _x((k, k, 1, C))
  ref, ours = _depthwise_pair(stride, dilation, pad)
  hvp = lambda conv: jax.jvp(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)),
                             (x, w), (dx, dw))
  with autodiff.forward_mode_autodiff():
    chex.assert_trees_all_close(hvp(ours), hvp(ref), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_matches_flax_with_gradient(stride):
  x = _x((2, 7, 7, 3))
  ref = lambda x: nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))
  ours = lambda x: ops.max_pool2d(x, 3, stride, 1)
  chex.assert_trees_all_close(ours(x), ref(x))
  f = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))
  chex.assert_trees_all_close(f(ours)(x), f(ref)(x), atol=1e-6)


def test_max_pool_gradient_goes_to_first_max_like_pytorch():
  # Ties: PyTorch routes the gradient to the first maximum in row-major window order.
  g = jax.grad(lambda x: jnp.sum(ops.max_pool2d(x, 3, 2, 1)))(jnp.zeros((1, 4, 4, 1)))
  expected = np.zeros((4, 4))
  expected[:2, :2] = 1
  np.testing.assert_array_equal(g[0, :, :, 0], expected)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (5, 3, 0)])
def test_avg_pool_matches_flax_with_gradient(k, stride, pad):
  x = _x((2, 8, 8, 3))
  ref = lambda x: nnx.avg_pool(x, (k, k), strides=(stride, stride), padding=((pad, pad),) * 2,
                               count_include_pad=False)
  ours = lambda x: ops.avg_pool2d(x, k, stride, pad)
  chex.assert_trees_all_close(ours(x), ref(x), atol=1e-6)
  f = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))
  chex.assert_trees_all_close(f(ours)(x), f(ref)(x), atol=1e-6)


def test_fusion_barrier_is_identity_in_value_and_gradient():
  x, g = _x((2, 3, 3, 5)), _x((2, 3, 3, 5))
  y, vjp = jax.vjp(jax.jit(ops.fusion_barrier), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(g)[0], g)


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
