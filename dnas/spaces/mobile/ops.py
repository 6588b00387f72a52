"""The blocks of the MobileNetV2-style spaces: ProxylessNAS's and FBNet's, NHWC.

An inverted residual (MobileNetV2, Sandler et al. 2018) is a 1x1 expansion, a k x k
depthwise conv and a 1x1 linear projection, each followed by BatchNorm, the first two
by an activation, and the input added when the stride is 1 and the channels stay.
- ProxylessNAS (Cai et al., ICLR 2019; mit-han-lab/proxylessnas `MBInvertedConvLayer`):
  ReLU6, BN eps 1e-3, no expansion conv at expansion 1, hidden width round(C_in * e).
- FBNet (Wu et al., CVPR 2019, Table 2; its original builder, maskrcnn-benchmark
  `fbnet_builder.IRFBlock`): ReLU, BN eps 1e-5, the expansion conv at every expansion,
  and in the `_g2` blocks both 1x1 convs in 2 groups with a channel shuffle after the
  first.
No conv has a bias; padding is PyTorch's symmetric k // 2. Weights are initialised as
both references do (He normal over fan-out: N(0, 2 / (k * k * C_out))).
"""

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.arch import channel_shuffle
from dnas.kernels import depthwise_conv2d
from dnas.layers import BatchNorm, uniform_init

# ProxylessNAS's mobile space (imagenet_arch_search.py): kernel 3/5/7, expansion 3/6,
# and "zero" (the block is skipped) where the block has an identity shortcut.
PROXYLESS_OPS = ("3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "5x5_MBConv6", "7x7_MBConv3",
                 "7x7_MBConv6")
ZERO = "zero"
# FBNet's 9 candidates (Table 2): k kernel, e expansion, g2 grouped 1x1 convs, skip.
FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6",
             "skip")
SKIP = "skip"
FAMILIES = ("proxyless", "fbnet")


class Style(NamedTuple):
  """What differs between the two references' blocks."""
  act: str                # "relu6" (ProxylessNAS) or "relu" (FBNet)
  bn_eps: float
  expand_at_one: bool     # an expansion conv also at expansion 1 (FBNet)


STYLES = {"proxyless": Style("relu6", 1e-3, False), "fbnet": Style("relu", 1e-5, True)}


class OpSpec(NamedTuple):
  kernel: int
  expand: int
  groups: int = 1


def parse_op(op: str) -> OpSpec | None:
  """The inverted residual an op name describes, None for "zero" and "skip"; a
  ValueError for a name of neither family."""
  if op in (ZERO, SKIP):
    return None
  m = re.fullmatch(r"(\d)x\1_MBConv(\d)", op) or re.fullmatch(r"k(\d)_e(\d)(_g2)?", op)
  if not m:
    raise ValueError(f"unknown op {op!r}; valid: {', '.join(PROXYLESS_OPS + (ZERO,) + FBNET_OPS)}")
  return OpSpec(int(m.group(1)), int(m.group(2)), 2 if m.lastindex == 3 and m.group(3) else 1)


def family_of(op: str) -> str | None:
  """"proxyless" or "fbnet" for an op of one family only; None for "zero" and "skip"
  used outside their family's checks."""
  if op in PROXYLESS_OPS or op == ZERO:
    return "proxyless"
  if op in FBNET_OPS:
    return "fbnet"
  raise ValueError(f"unknown op {op!r}")


def he_fan_out(key, shape, dtype=jnp.float32):
  """N(0, 2 / fan_out) for a (kh, kw, in/groups, out) kernel: ProxylessNAS's `he_fout`
  and FBNet's kaiming_normal(mode="fan_out"); fan_out = kh * kw * out."""
  std = math.sqrt(2.0 / (shape[0] * shape[1] * shape[-1]))
  if isinstance(key, jax.core.Tracer):
    return std * jax.random.normal(key, shape, dtype)
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, std, shape), dtype)


def activation(name: str):
  return jax.nn.relu6 if name == "relu6" else jax.nn.relu


class Conv1x1(nnx.Module):
  """1x1 conv in `groups` groups, no bias: f32[N, H, W, C_in] -> f32[N, H, W, C_out].
  Kernel f32[1, 1, C_in / groups, C_out] (the `nnx.Conv` layout)."""

  def __init__(self, C_in: int, C_out: int, groups: int = 1, *, rngs: nnx.Rngs):
    self.groups = groups
    self.kernel = nnx.Param(he_fan_out(rngs.params(), (1, 1, C_in // groups, C_out)))

  def __call__(self, x):
    w = self.kernel[0, 0]
    if self.groups == 1:
      return jnp.einsum("nhwc,co->nhwo", x, w)
    g = self.groups
    xg = x.reshape(*x.shape[:-1], g, x.shape[-1] // g)
    wg = w.reshape(w.shape[0], g, w.shape[1] // g)  # [C_in/g, g, C_out/g]
    y = jnp.einsum("nhwgc,cgo->nhwgo", xg, wg)
    return y.reshape(*y.shape[:-2], -1)


class ConvBNAct(nnx.Module):
  """k x k conv (no bias) -> BN -> activation (None: none): the stems, heads and FBNet's
  projecting skip."""

  def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, style: Style,
               act: bool = True, *, rngs: nnx.Rngs):
    self.stride, self.kernel_size, self.act = stride, kernel, style.act if act else None
    self.conv = (Conv1x1(C_in, C_out, rngs=rngs) if kernel == 1 else
                 nnx.Conv(C_in, C_out, (kernel, kernel), strides=stride,
                          padding=((kernel // 2,) * 2,) * 2, use_bias=False,
                          kernel_init=he_fan_out, rngs=rngs))
    self.bn = BatchNorm(C_out, eps=style.bn_eps)

  def __call__(self, x):
    if self.kernel_size == 1 and self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    y = self.bn(self.conv(x))
    return activation(self.act)(y) if self.act else y


class InvertedResidual(nnx.Module):
  """[1x1 (grouped) conv, BN, act] -> [shuffle] -> k x k depthwise conv (stride), BN, act
  -> 1x1 (grouped) linear projection, BN; plus the input when stride 1 and C_in == C_out.
  f32[N, H, W, C_in] -> f32[N, H / stride, W / stride, C_out]."""

  def __init__(self, C_in: int, C_out: int, stride: int, spec: OpSpec, style: Style, *,
               rngs: nnx.Rngs):
    mid = int(round(C_in * spec.expand))
    self.act, self.groups, self.stride, self.kernel_size = style.act, spec.groups, stride, spec.kernel
    self.residual = stride == 1 and C_in == C_out
    if spec.expand != 1 or style.expand_at_one:
      self.expand = Conv1x1(C_in, mid, spec.groups, rngs=rngs)
      self.bn_expand = BatchNorm(mid, eps=style.bn_eps)
    else:
      self.expand = self.bn_expand = None
    self.depthwise = nnx.Param(he_fan_out(rngs.params(), (spec.kernel, spec.kernel, 1, mid)))
    self.bn_depthwise = BatchNorm(mid, eps=style.bn_eps)
    self.project = Conv1x1(mid, C_out, spec.groups, rngs=rngs)
    self.bn_project = BatchNorm(C_out, eps=style.bn_eps)

  def __call__(self, x):
    act = activation(self.act)
    y = x
    if self.expand is not None:
      y = act(self.bn_expand(self.expand(y)))
    if self.groups > 1:
      y = channel_shuffle(y, self.groups)
    y = depthwise_conv2d(y, self.depthwise[...], self.stride, 1, self.kernel_size // 2)
    y = self.bn_project(self.project(act(self.bn_depthwise(y))))
    return x + y if self.residual else y


class Identity(nnx.Module):
  """ProxylessNAS's "zero" block (the block is skipped) and FBNet's "skip" where the
  shape stays."""

  def __call__(self, x):
    return x


def make_block(op: str, C_in: int, C_out: int, stride: int, style: Style, *,
               rngs: nnx.Rngs) -> nnx.Module:
  """The block `op` for a layer from C_in to C_out channels at `stride`; a ValueError
  for "zero" where the layer changes the shape (ProxylessNAS offers it only where the
  block has an identity shortcut)."""
  spec = parse_op(op)
  if spec is not None:
    return InvertedResidual(C_in, C_out, stride, spec, style, rngs=rngs)
  if stride == 1 and C_in == C_out:
    return Identity()
  if op == ZERO:
    raise ValueError(f"op zero needs stride 1 and C_in == C_out, got {C_in}->{C_out} "
                     f"stride {stride}")
  # FBNet's skip where the shape changes: 1x1 conv (stride), BN, ReLU (fbnet_builder.Identity).
  return ConvBNAct(C_in, C_out, 1, stride, style, rngs=rngs)


def classifier(C_in: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Linear:
  """The final linear layer: PyTorch's default init for the weight (both references
  keep it), bias 0 (ProxylessNAS's `init_model`)."""
  bound = C_in ** -0.5
  return nnx.Linear(C_in, num_classes,
                    kernel_init=lambda k, s, d=jnp.float32: uniform_init(k, s, bound, d),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)
