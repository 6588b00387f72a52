"""MobileNetV2-style networks of the ProxylessNAS and FBNet spaces: a layout (stem,
searchable layers, head) and, per layer, one block (the final network) or a `MixedOp`
over the layer's candidates (the supernet). NHWC.

  layout = proxyless_layout()                       # the mobile search space, 224x224
  supernet = MobileNet(layout, num_classes=1000, in_channels=3, rngs=nnx.Rngs(0))
  net = MobileNet(PUBLISHED["proxyless_mobile"], num_classes=1000, in_channels=3, rngs=...)
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dnas.arch import MixedOp, binary_gates, op_weights, runs_one_op
from dnas.spaces.mobile import ops as ops_lib
from dnas.spaces.mobile.ops import STYLES, ConvBNAct, make_block


class Layout(NamedTuple):
  """The macro-architecture: `family` ("proxyless" or "fbnet": the blocks' style and
  candidates), a 3x3 stem conv to `stem` channels at `stem_stride`, ProxylessNAS's fixed
  3x3_MBConv1 block to `first` channels (0: none, FBNet), the searchable `layers` as
  (C_out, stride), and a 1x1 conv to `head` channels before pooling and the classifier."""
  family: str
  stem: int
  stem_stride: int
  first: int
  layers: tuple[tuple[int, int], ...]
  head: int

  def layer_shapes(self):
    """(C_in, C_out, stride) of each searchable layer."""
    c = self.first or self.stem
    out = []
    for c_out, stride in self.layers:
      out.append((c, c_out, stride))
      c = c_out
    return out


class MobileArch(NamedTuple):
  """A network of the space: its layout and one op per searchable layer."""
  layout: Layout
  ops: tuple[str, ...]

  def __str__(self):
    return f"{self.layout.family}[{' '.join(self.ops)}]"


def make_divisible(v: float, divisor: int = 8) -> int:
  """ProxylessNAS's (and MobileNetV2's) channel rounding: the nearest multiple of 8, at
  least 8, never below 90 % of `v`."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def _stages(widths, depths, strides):
  return tuple((w, s if i == 0 else 1) for w, d, s in zip(widths, depths, strides)
               for i in range(d))


# ProxylessNAS's mobile space (search/imagenet_arch_search.py, super_proxyless.py).
PROXYLESS = dict(stem=32, first=16, widths=(24, 40, 80, 96, 192, 320), depths=(4, 4, 4, 4, 4, 1),
                 strides=(2, 2, 2, 1, 2, 1), head=1280)
# FBNet's space (Table 1): 22 layers; the head is 1984 wide (FBNet-B, -C; FBNet-A 1504).
FBNET = dict(stem=16, first=0, widths=(16, 24, 32, 64, 112, 184, 352),
             depths=(1, 4, 4, 4, 4, 4, 1), strides=(1, 2, 2, 2, 1, 2, 1), head=1984)
DEFAULTS = {"proxyless": PROXYLESS, "fbnet": FBNET}


def layout(family: str, *, width_mult: float = 1.0, stem_stride: int = 2, widths=(),
           depths=(), strides=(), head: int = 0) -> Layout:
  """The family's layout, its stage widths, depths and strides replaced where given;
  widths (stem, first block, stages) times `width_mult`, rounded by `make_divisible`;
  the head widened only for `width_mult` > 1 (ProxylessNAS's rule)."""
  d = DEFAULTS[family]
  widths, depths, strides = (tuple(widths) or d["widths"], tuple(depths) or d["depths"],
                             tuple(strides) or d["strides"])
  if not len(widths) == len(depths) == len(strides):
    raise ValueError(f"widths {widths}, depths {depths} and strides {strides} must have "
                     f"one entry per stage")
  scaled = [make_divisible(w * width_mult) for w in widths]
  head = head or d["head"]
  return Layout(family, make_divisible(d["stem"] * width_mult), stem_stride,
                make_divisible(d["first"] * width_mult) if d["first"] else 0,
                _stages(scaled, depths, strides),
                make_divisible(head * width_mult) if width_mult > 1 else head)


def candidates(family: str, C_in: int, C_out: int, stride: int) -> tuple[str, ...]:
  """The ops a layer chooses from: ProxylessNAS's 6 MBConvs, and "zero" where the block
  has an identity shortcut (stride 1, C_in == C_out); FBNet's 9 blocks everywhere."""
  if family == "fbnet":
    return ops_lib.FBNET_OPS
  zero = (ops_lib.ZERO,) if stride == 1 and C_in == C_out else ()
  return ops_lib.PROXYLESS_OPS + zero


class MobileNet(nnx.Module):
  """Stem conv, [3x3_MBConv1], the searchable layers, 1x1 head conv, global average
  pool, dropout, linear classifier.

  Args:
    arch: a `MobileArch` (the final network) or a `Layout` (the supernet: each layer a
      `MixedOp` over `candidates`, owning its alpha f32[K]).
    num_classes, in_channels: of the data.
    dropout: before the classifier (ProxylessNAS retrains with 0.1-0.3).
    relaxation: the supernet's op weights (`dnas.arch.RELAXATIONS`); "binary" runs
      ProxylessNAS's sampled paths (`dnas.arch.binary_gates`).
    gumbel_hard: with "gumbel", one sampled op per layer (GDAS).

  Call: f32[N, H, W, in_channels] -> f32[N, num_classes]. Keyword inputs of the
  supernet (`dnas.relaxation`): `arch_key` (sampling relaxations), `tau` (Gumbel),
  `arch_phase` (binary gates: 0 two paths, 1 one); `key` draws the dropout mask.
  """

  def __init__(self, arch: MobileArch | Layout, num_classes: int, in_channels: int, *,
               dropout: float = 0.0, relaxation: str = "softmax", gumbel_hard: bool = False,
               rngs: nnx.Rngs):
    lay, chosen = (arch, None) if isinstance(arch, Layout) else (arch.layout, arch.ops)
    if chosen is not None and len(chosen) != len(lay.layers):
      raise ValueError(f"{len(chosen)} ops for {len(lay.layers)} layers")
    style = STYLES[lay.family]
    self.relaxation, self.gumbel_hard, self.dropout = relaxation, gumbel_hard, dropout
    self.deterministic = False  # nnx's train()/eval() switch the dropout
    self.stem = ConvBNAct(in_channels, lay.stem, 3, lay.stem_stride, style, rngs=rngs)
    self.first = (make_block("3x3_MBConv1", lay.stem, lay.first, 1, style, rngs=rngs)
                  if lay.first else None)
    layers = []
    for i, (c_in, c_out, stride) in enumerate(lay.layer_shapes()):
      if chosen is None:
        layers.append(MixedOp([make_block(op, c_in, c_out, stride, style, rngs=rngs)
                               for op in candidates(lay.family, c_in, c_out, stride)],
                              rngs=rngs))
      else:
        layers.append(make_block(chosen[i], c_in, c_out, stride, style, rngs=rngs))
    self.layers = nnx.List(layers)
    self.head = ConvBNAct(lay.layers[-1][0], lay.head, 1, 1, style, rngs=rngs)
    self.classifier = ops_lib.classifier(lay.head, num_classes, rngs=rngs)

  def _mixed(self, i: int, layer: MixedOp, x, arch_key, tau, arch_phase):
    logits = layer.alpha[...]
    key = None if arch_key is None else jax.random.fold_in(arch_key, i)
    if self.relaxation == "binary":
      if key is None:  # evaluation: the path the architecture derives
        return layer.run_op(jnp.argmax(logits), x)
      if arch_phase == 1:  # weight step: one path drawn from softmax(alpha)
        return layer.run_op(jax.random.categorical(key, logits), x)
      return layer.run_paths(x, *binary_gates(key, logits))
    weights = op_weights(logits, self.relaxation, key, tau, self.gumbel_hard)
    return layer(x, weights, sampled=runs_one_op(self.relaxation, key, self.gumbel_hard))

  def __call__(self, x, *, arch_key=None, tau=None, arch_phase: int = 0, key=None):
    x = self.stem(x)
    if self.first is not None:
      x = self.first(x)
    for i, layer in enumerate(self.layers):
      x = (self._mixed(i, layer, x, arch_key, tau, arch_phase) if isinstance(layer, MixedOp)
           else layer(x))
    x = jnp.mean(self.head(x), axis=(1, 2))
    if self.dropout > 0 and not self.deterministic and key is not None:
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)
    return self.classifier(x)


def ops_of(layout: Layout, picks: Sequence[int]) -> tuple[str, ...]:
  """Op names of per-layer candidate indices."""
  return tuple(candidates(layout.family, *shape)[k]
               for shape, k in zip(layout.layer_shapes(), picks))
