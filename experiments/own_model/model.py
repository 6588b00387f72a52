"""A researcher's own NNX network with searched layers: a small ResNet-style stack for
8x8 digits in which each residual block's transform is a `dnas.MixedOp` over candidate
ops of our choosing (kernel size, width, activation). Nothing here is DARTS-specific.
"""

from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

import dnas


class ConvAct(nnx.Module):
  """k x k conv, BatchNorm, activation; f32[N, H, W, C] -> same."""

  def __init__(self, c: int, k: int, act: Callable, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(c, c, (k, k), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(c, rngs=rngs)
    self.act = act

  def __call__(self, x):
    return self.act(self.bn(self.conv(x)))


class Bottleneck(nnx.Module):
  """1x1 conv to `ratio` x C, 3x3 conv, 1x1 conv back to C, with BatchNorm and ReLU."""

  def __init__(self, c: int, ratio: float, *, rngs: nnx.Rngs):
    w = max(1, int(c * ratio))
    self.expand = nnx.Conv(c, w, (1, 1), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(w, rngs=rngs)
    self.conv = nnx.Conv(w, w, (3, 3), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(w, rngs=rngs)
    self.project = nnx.Conv(w, c, (1, 1), use_bias=False, rngs=rngs)
    self.bn3 = nnx.BatchNorm(c, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.expand(x)))
    x = nnx.relu(self.bn2(self.conv(x)))
    return self.bn3(self.project(x))


# The candidate ops of every searched block, by name.
CANDIDATES = {
    "conv3_relu": lambda c, rngs: ConvAct(c, 3, nnx.relu, rngs=rngs),
    "conv5_relu": lambda c, rngs: ConvAct(c, 5, nnx.relu, rngs=rngs),
    "conv3_gelu": lambda c, rngs: ConvAct(c, 3, nnx.gelu, rngs=rngs),
    "conv3_silu": lambda c, rngs: ConvAct(c, 3, nnx.silu, rngs=rngs),
    "bottleneck_x2": lambda c, rngs: Bottleneck(c, 2.0, rngs=rngs),
    "bottleneck_x0.5": lambda c, rngs: Bottleneck(c, 0.5, rngs=rngs),
}


class Block(nnx.Module):
  """Residual block x + op(x), op searched among `ops` (names in CANDIDATES)."""

  def __init__(self, c: int, ops, *, rngs: nnx.Rngs):
    self.op = dnas.MixedOp([CANDIDATES[name](c, rngs) for name in ops], rngs=rngs)

  def __call__(self, x):
    return x + self.op(x)


class OwnNet(nnx.Module):
  """Stem, `blocks` searched blocks at width C, a stride-2 conv to 2C, `blocks` more,
  global average pool and a linear classifier. f32[N, H, W, in_channels] -> f32[N, classes]."""

  def __init__(self, *, width: int = 16, blocks: int = 2, classes: int = 10,
               in_channels: int = 1, ops=tuple(CANDIDATES), rngs: nnx.Rngs):
    c = width
    self.stem_conv = nnx.Conv(in_channels, c, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(c, rngs=rngs)
    self.stage1 = nnx.List([Block(c, ops, rngs=rngs) for _ in range(blocks)])
    self.down = nnx.Conv(c, 2 * c, (3, 3), strides=2, use_bias=False, rngs=rngs)
    self.down_bn = nnx.BatchNorm(2 * c, rngs=rngs)
    self.stage2 = nnx.List([Block(2 * c, ops, rngs=rngs) for _ in range(blocks)])
    self.head = nnx.Linear(2 * c, classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem_conv(x)))
    for block in self.stage1:
      x = block(x)
    x = nnx.relu(self.down_bn(self.down(x)))
    for block in self.stage2:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def describe(picks: dict[str, int], ops=tuple(CANDIDATES)) -> dict[str, str]:
  """{block path: op name} of `dnas.arch.choices` picks."""
  return {path: ops[k] for path, k in sorted(picks.items())}
