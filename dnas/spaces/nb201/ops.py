"""Candidate operations and the residual block of NAS-Bench-201 (Dong & Yang, ICLR 2020).

NHWC. Mirrors the reference `xautodl/models/cell_operations.py` layer for layer: ReLU ->
Conv -> BN whose convolution has a bias exactly when the BatchNorm is affine-free
(`bias=not affine` there), a 3x3 average pool without the padding in its counts, a
`none` op of zeros, and the ResNet basic block between the stages.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dnas.kernels import avg_pool2d
from dnas.layers import Conv1x1, batch_norm, conv2d

# The five operations of NAS-Bench-201 in the reference order (index = alpha column).
NAS_BENCH_201 = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
PRIMITIVES = NAS_BENCH_201


class ReLUConvBN(nnx.Module):
  """ReLU -> k x k Conv (bias iff not affine) -> BN: f32[N, H, W, C_in] -> f32[N, H/s, W/s, C_out]."""

  def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
               affine: bool = True, track_running_stats: bool = True, *, rngs: nnx.Rngs):
    self.conv = conv2d(C_in, C_out, kernel_size, stride, padding, bias=not affine, rngs=rngs)
    self.bn = batch_norm(C_out, affine, track_running_stats=track_running_stats)

  def __call__(self, x):
    return self.bn(self.conv(jax.nn.relu(x)))


class Pooling(nnx.Module):
  """3x3 average pool, padding 1, count_include_pad=False; a 1x1 ReLUConvBN first when
  the channel count changes (never inside a NAS-Bench-201 cell)."""

  def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True,
               track_running_stats: bool = True, *, rngs: nnx.Rngs):
    self.stride = stride
    self.preprocess = (None if C_in == C_out else
                       ReLUConvBN(C_in, C_out, 1, 1, 0, affine, track_running_stats, rngs=rngs))

  def __call__(self, x):
    if self.preprocess is not None:
      x = self.preprocess(x)
    return avg_pool2d(x, 3, self.stride, 1)


class Zero(nnx.Module):
  """`none`: zeros of the output's shape (real zeros: a non-finite input cannot leak)."""

  def __init__(self, C_out: int, stride: int):
    self.C_out, self.stride = C_out, stride

  def __call__(self, x):
    y = x[:, ::self.stride, ::self.stride, :1]
    return jnp.zeros(y.shape[:3] + (self.C_out,), x.dtype)


class Identity(nnx.Module):

  def __call__(self, x):
    return x


def make_op(name: str, C_in: int, C_out: int, stride: int, affine: bool = True,
            track_running_stats: bool = True, *, rngs: nnx.Rngs) -> nnx.Module:
  """The reference's `OPS[name](C_in, C_out, stride, affine, track_running_stats)`."""
  if name == "none":
    return Zero(C_out, stride)
  if name == "skip_connect":
    if stride != 1 or C_in != C_out:
      # The reference's FactorizedReduce; no NAS-Bench-201 network builds one.
      raise ValueError(f"skip_connect with stride {stride} or {C_in} -> {C_out} channels is "
                       f"not part of NAS-Bench-201")
    return Identity()
  if name == "nor_conv_1x1":
    return ReLUConvBN(C_in, C_out, 1, stride, 0, affine, track_running_stats, rngs=rngs)
  if name == "nor_conv_3x3":
    return ReLUConvBN(C_in, C_out, 3, stride, 1, affine, track_running_stats, rngs=rngs)
  if name == "avg_pool_3x3":
    return Pooling(C_in, C_out, stride, affine, track_running_stats, rngs=rngs)
  raise ValueError(f"unknown op {name!r}; valid: {', '.join(NAS_BENCH_201)}")


class AvgPool2x2(nnx.Module):

  def __call__(self, x):
    return avg_pool2d(x, 2, 2, 0)


class ResNetBasicblock(nnx.Module):
  """The reference's block between stages: two 3x3 ReLUConvBNs (the first with `stride`)
  plus a shortcut (stride 2: 2x2 average pool then a 1x1 conv; other widths: a 1x1
  ReLUConvBN; else identity). f32[N, H, W, C_in] -> f32[N, H/s, W/s, C_out]."""

  def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True,
               track_running_stats: bool = True, *, rngs: nnx.Rngs):
    if stride not in (1, 2):
      raise ValueError(f"ResNetBasicblock: stride must be 1 or 2, got {stride}")
    self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine, track_running_stats, rngs=rngs)
    self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine, track_running_stats, rngs=rngs)
    if stride == 2:
      self.downsample = nnx.Sequential(AvgPool2x2(), Conv1x1(C_in, C_out, rngs=rngs))
    elif C_in != C_out:
      self.downsample = ReLUConvBN(C_in, C_out, 1, 1, 0, affine, track_running_stats, rngs=rngs)
    else:
      self.downsample = None
    self.out_dim = C_out

  def __call__(self, x):
    y = self.conv_b(self.conv_a(x))
    return (x if self.downsample is None else self.downsample(x)) + y
