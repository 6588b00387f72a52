"""Candidate operations of the DARTS search space (Liu et al. 2019, Sec. 2.1).

Layout is NHWC. Every op maps f32[N, H, W, C] to f32[N, ceil(H/s), ceil(W/s), C]
(s = stride), with the reference's ReLU-Conv-BN order. `affine=False` gives the
search-phase BatchNorm without scale and shift; final networks use `affine=True`.

BatchNorm follows PyTorch (momentum 0.1 there = decay 0.9 here, eps 1e-5, unbiased
running variance); its mode follows `model.train()` / `model.eval()`.

The spatial kernels (depthwise conv, pools) come from `dnas.kernels`: XLA's own ops,
or the CPU fast path when the program is compiled for a CPU.

Weights are initialised as PyTorch does (uniform, variance 1/(3 fan_in)), so that
training runs are comparable with the reference code.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from dnas.kernels import avg_pool2d, depthwise_conv2d, max_pool2d
# Shared layers, also re-exported here for the space's modules.
from dnas.layers import (BN_EPS, BN_MOMENTUM, BatchNorm, Conv1x1, batch_norm,  # noqa: F401
                         conv2d, linear, torch_kernel_init, uniform_init)

# The eight operations searched by DARTS, in the reference order (index = alpha column).
PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class DepthwiseConv(nnx.Module):
  """Depthwise conv, no bias: f32[N, H, W, C] -> f32[N, Ho, Wo, C]."""

  def __init__(self, C: int, kernel_size: int, stride: int, padding: int,
               dilation: int = 1, *, rngs: nnx.Rngs):
    self.stride, self.padding, self.dilation = stride, padding, dilation
    self.kernel = nnx.Param(torch_kernel_init(rngs.params(), (kernel_size, kernel_size, 1, C)))

  def __call__(self, x):
    return depthwise_conv2d(x, self.kernel[...], self.stride, self.dilation, self.padding)


class ReLUConvBN(nnx.Module):
  """ReLU -> Conv -> BN (reference `ReLUConvBN`)."""

  def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, *, rngs):
    self.conv = conv2d(C_in, C_out, kernel_size, stride, padding, rngs=rngs)
    self.bn = batch_norm(C_out, affine, rngs)

  def __call__(self, x):
    return self.bn(self.conv(jax.nn.relu(x)))


class DilConv(nnx.Module):
  """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BN (reference `DilConv`)."""

  def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True, *, rngs):
    self.dw = DepthwiseConv(C_in, kernel_size, stride, padding, dilation, rngs=rngs)
    self.pw = Conv1x1(C_in, C_out, rngs=rngs)
    self.bn = batch_norm(C_out, affine, rngs)

  def __call__(self, x):
    return self.bn(self.pw(self.dw(jax.nn.relu(x))))


class SepConv(nnx.Module):
  """The depthwise-separable block applied twice (reference `SepConv`).

  Only the first depthwise conv is strided; the first block keeps C_in channels.
  """

  def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, *, rngs):
    self.block1 = DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine, rngs=rngs)
    self.block2 = DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine, rngs=rngs)

  def __call__(self, x):
    return self.block2(self.block1(x))


class Identity(nnx.Module):

  def __call__(self, x):
    return x


class Zero(nnx.Module):
  """The `none` op: zeros at the output resolution (x[:, ::s, ::s] * 0 in the reference).

  Returns real zeros rather than x * 0, so a non-finite input cannot leak NaN through it.
  """

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x):
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class FactorizedReduce(nnx.Module):
  """Halves the resolution with two offset 1x1 stride-2 convs, concatenated, then BN.

  f32[N, H, W, C_in] -> f32[N, ceil(H/2), ceil(W/2), C_out]. The second path reads
  the odd rows and columns (x[:, 1:, 1:] strided by 2). For odd H or W the
  reference's two paths disagree in size and `torch.cat` fails; here the second
  path is zero-padded at the bottom/right so both give ceil(H/2) (BUILD_NOTES.md).
  """

  def __init__(self, C_in: int, C_out: int, affine: bool = True, *, rngs: nnx.Rngs):
    if C_out % 2:
      raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
    self.conv_1 = Conv1x1(C_in, C_out // 2, 2, rngs=rngs)
    self.conv_2 = Conv1x1(C_in, C_out // 2, 2, rngs=rngs)
    self.bn = batch_norm(C_out, affine, rngs)

  def __call__(self, x):
    x = jax.nn.relu(x)
    _, h, w, _ = x.shape
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    return self.bn(jnp.concatenate([self.conv_1(x), self.conv_2(shifted)], axis=-1))


class MaxPool(nnx.Module):
  """3x3 max pool, padding 1 (padded cells never win)."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x):
    return max_pool2d(x, 3, self.stride, 1)


class AvgPool(nnx.Module):
  """3x3 average pool, padding 1, count_include_pad=False: border cells divide by
  the number of in-image pixels."""

  def __init__(self, stride: int, kernel_size: int = 3, padding: int = 1):
    self.stride, self.kernel_size, self.padding = stride, kernel_size, padding

  def __call__(self, x):
    return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Conv7x1_1x7(nnx.Module):
  """ReLU -> (1x7) conv -> (7x1) conv -> BN (reference `conv_7x1_1x7`, NASNet/AmoebaNet)."""

  def __init__(self, C, stride, affine=True, *, rngs):
    self.conv_a = conv2d(C, C, (1, 7), (1, stride), (0, 3), rngs=rngs)
    self.conv_b = conv2d(C, C, (7, 1), (stride, 1), (3, 0), rngs=rngs)
    self.bn = batch_norm(C, affine, rngs)

  def __call__(self, x):
    return self.bn(self.conv_b(self.conv_a(jax.nn.relu(x))))


OpFactory = Callable[[int, int, bool, nnx.Rngs], nnx.Module]

# name -> (C, stride, affine, rngs) -> module. PRIMITIVES plus the two extra ops of
# the published NASNet and AmoebaNet cells.
OPS: dict[str, OpFactory] = {
    "none": lambda C, s, affine, rngs: Zero(s),
    "avg_pool_3x3": lambda C, s, affine, rngs: AvgPool(s),
    "max_pool_3x3": lambda C, s, affine, rngs: MaxPool(s),
    "skip_connect": lambda C, s, affine, rngs: (
        Identity() if s == 1 else FactorizedReduce(C, C, affine, rngs=rngs)),
    "sep_conv_3x3": lambda C, s, affine, rngs: SepConv(C, C, 3, s, 1, affine, rngs=rngs),
    "sep_conv_5x5": lambda C, s, affine, rngs: SepConv(C, C, 5, s, 2, affine, rngs=rngs),
    "sep_conv_7x7": lambda C, s, affine, rngs: SepConv(C, C, 7, s, 3, affine, rngs=rngs),
    "dil_conv_3x3": lambda C, s, affine, rngs: DilConv(C, C, 3, s, 2, 2, affine, rngs=rngs),
    "dil_conv_5x5": lambda C, s, affine, rngs: DilConv(C, C, 5, s, 4, 2, affine, rngs=rngs),
    "conv_7x1_1x7": lambda C, s, affine, rngs: Conv7x1_1x7(C, s, affine, rngs=rngs),
}


def make_op(name: str, C: int, stride: int, affine: bool, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the op called `name`; an unknown name lists the valid ones."""
  if name not in OPS:
    raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}")
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2, got {stride}")
  return OPS[name](C, stride, affine, rngs)
