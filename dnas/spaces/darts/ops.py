"""Candidate operations of the DARTS search space (Liu et al. 2019, Sec. 2.1).

Layout is NHWC. Every op maps f32[N, H, W, C] to f32[N, ceil(H/s), ceil(W/s), C]
(s = stride), with the reference's ReLU-Conv-BN order. `affine=False` gives the
search-phase BatchNorm without scale and shift; final networks use `affine=True`.

BatchNorm follows PyTorch (momentum 0.1 there = decay 0.9 here, eps 1e-5, unbiased
running variance); its mode follows `model.train()` / `model.eval()`.

Weights are initialised as PyTorch does (uniform, variance 1/(3 fan_in)), so that
training runs are comparable with the reference code.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from dnas import autodiff

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

BN_MOMENTUM = 0.9  # PyTorch BatchNorm2d(momentum=0.1).
BN_EPS = 1e-5

def uniform_init(key: jax.Array, shape, bound: float, dtype=jnp.float32) -> jax.Array:
  """U(-bound, bound) of `shape`.

  Eagerly the numbers are drawn on the host from a NumPy generator seeded by `key`:
  jax.random would compile one XLA program per distinct shape (~0.2 s each, ~10 s for a
  small supernet). Under tracing (`nnx.eval_shape`, `jit`) it uses jax.random.
  """
  if isinstance(key, jax.core.Tracer):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
  return jnp.asarray(np.random.default_rng(seed).uniform(-bound, bound, shape), dtype)


def torch_kernel_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """PyTorch's default conv/linear weight init (kaiming_uniform, a=sqrt(5)):
  U(+-1/sqrt(fan_in)), fan_in = prod(shape[:-1]) for the (kh, kw, in, out) layout."""
  return uniform_init(key, shape, math.prod(shape[:-1]) ** -0.5, dtype)


class BatchNorm(nnx.Module):
  """PyTorch `BatchNorm2d` over the channel (last) axis of f32[N, H, W, C].

  Train mode (`use_running_average=False`, set by `model.train()`) normalises with the
  biased batch variance and updates the running mean and the *unbiased* running
  variance with decay `momentum`, as PyTorch does. Eval mode uses the running values.
  `affine=False` has no scale and shift (the supernet's BN).
  """

  def __init__(self, C: int, affine: bool = True, *, momentum: float = BN_MOMENTUM,
               eps: float = BN_EPS):
    self.momentum, self.eps, self.use_running_average = momentum, eps, False
    self.scale = nnx.Param(jnp.asarray(np.ones(C, np.float32))) if affine else None
    self.bias = nnx.Param(jnp.asarray(np.zeros(C, np.float32))) if affine else None
    self.mean = nnx.BatchStat(jnp.asarray(np.zeros(C, np.float32)))
    self.var = nnx.BatchStat(jnp.asarray(np.ones(C, np.float32)))

  def __call__(self, x):
    if self.use_running_average:
      mean, var = self.mean.get_value(), self.var.get_value()
    else:
      # Statistics in at least float32 (bfloat16 activations; float64 stays float64).
      axes = tuple(range(x.ndim - 1))
      stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
      mean = jnp.mean(x, axes, dtype=stat_dtype)
      var = jnp.mean(jnp.square(x.astype(stat_dtype) - mean), axes)
      n = x.size // x.shape[-1]
      m = self.momentum
      # set_value, not `[...] =`: flax's indexed set asks a tracer for its sharding,
      # which walks the whole jaxpr and makes tracing quadratic in model size.
      self.mean.set_value(m * self.mean.get_value() + (1 - m) * jax.lax.stop_gradient(mean))
      self.var.set_value(m * self.var.get_value()
                         + (1 - m) * jax.lax.stop_gradient(var) * n / max(n - 1, 1))
    y = (x - mean.astype(x.dtype)) * jax.lax.rsqrt(var + self.eps).astype(x.dtype)
    if self.scale is not None:
      y = y * self.scale.get_value() + self.bias.get_value()
    return y


def batch_norm(C: int, affine: bool, rngs: nnx.Rngs | None = None) -> BatchNorm:
  del rngs  # BatchNorm has no random initialisation.
  return BatchNorm(C, affine)


def linear(C_in: int, C_out: int, *, rngs: nnx.Rngs) -> nnx.Linear:
  """PyTorch `nn.Linear` (weight and bias uniform in +-1/sqrt(C_in))."""
  bias_init = lambda key, shape, dtype=jnp.float32: uniform_init(key, shape, C_in ** -0.5, dtype)
  return nnx.Linear(C_in, C_out, kernel_init=torch_kernel_init, bias_init=bias_init, rngs=rngs)


def _pad_hw(x, lo, hi=None, interior=0, value=0.0):
  """Pads (or crops, if negative) the H and W axes of f32[N, H, W, C]."""
  hi = lo if hi is None else hi
  cfg = ((0, 0, 0), (lo, hi, interior), (lo, hi, interior), (0, 0, 0))
  return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _out_size(size, k, stride, dilation, padding):
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _dot_identity(x):
  """x @ I over the last axis on CPU: equal to x (for finite x), and a matmul, which
  XLA:CPU never fuses into a loop. Other backends fuse differently: x unchanged."""
  if not jnp.issubdtype(x.dtype, jnp.floating) or jax.default_backend() != "cpu":
    return x
  return jnp.einsum("...c,cd->...d", x, jnp.eye(x.shape[-1], dtype=x.dtype),
                    precision=lax.Precision.HIGHEST)


def fusion_barrier(x: jax.Array) -> jax.Array:
  """Identity whose value and gradient each become a buffer of their own.

  XLA:CPU fuses cheap producers into every consumer, recomputing them. A supernet
  node feeds 8 ops on each later edge, and its gradient sums the input gradients of
  all of them: fused, each consumer recomputes hundreds of shifted slices. In the
  CIFAR normal cell that made the weight gradient 20x slower. `lax.optimization_barrier`
  does not help here: XLA:CPU removes it before fusion. A matmul by the identity costs
  one memory pass and is never fused; its derivatives (x @ I again) are matmuls too.
  """
  return _dot_identity(x)


def _materialize(*xs):
  """Applied to the inputs and outputs of every k*k shift loop: keeps the loop from
  recomputing its producer once per tap and its consumers from recomputing the loop."""
  return tuple(_dot_identity(x) for x in xs)


def _windows(xp, k, stride, dilation, ho, wo):
  """Yields (i, j, tap) with tap[n, y, x, c] = xp[n, y*stride + i*dilation, x*stride + j*dilation, c].

  Each tap is a strided slice of xp, f32[N, ho, wo, C]; XLA fuses a sum of them into one
  loop. Callers pass inputs and outputs through `_materialize`.
  """
  n, c = xp.shape[0], xp.shape[-1]
  for i in range(k):
    for j in range(k):
      di, dj = i * dilation, j * dilation
      yield i, j, lax.slice(xp, (0, di, dj, 0),
                            (n, di + (ho - 1) * stride + 1, dj + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))


def _depthwise_fwd_impl(x, kernel, stride, dilation, padding):
  k = kernel.shape[0]
  ho, wo = (_out_size(s, k, stride, dilation, padding) for s in x.shape[1:3])
  (x,) = _materialize(x)
  out = None
  for i, j, tap in _windows(_pad_hw(x, padding), k, stride, dilation, ho, wo):
    term = tap * kernel[i, j, 0]
    out = term if out is None else out + term
  return _materialize(out)[0]


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, dilation: int,
                     padding: int) -> jax.Array:
  """Depthwise 2-D cross-correlation, PyTorch `conv2d(groups=C)` semantics.

  Written as k*k strided shifts of the padded input, which XLA fuses into one loop; the
  input gradient is the same kind of loop over the dilated gradient with the flipped
  kernel, and the kernel gradient a matmul (`_depthwise_kernel_grad`). On CPU this is
  4-9x faster, forward and backward, than XLA's grouped convolution, whose kernel
  gradient is lowered as a dense convolution. Under
  `dnas.autodiff.forward_mode_autodiff()` JAX differentiates the forward loop itself.

  Args:
    x: f32[N, H, W, C].
    kernel: f32[k, k, 1, C].
    stride, dilation, padding: ints, symmetric padding on both sides.

  Returns:
    f32[N, Ho, Wo, C], Ho = (H + 2 padding - dilation (k - 1) - 1) // stride + 1.
  """
  if autodiff.plain_autodiff():
    return _depthwise_fwd_impl(x, kernel, stride, dilation, padding)
  return _depthwise_conv2d_vjp(x, kernel, stride, dilation, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_conv2d_vjp(x, kernel, stride, dilation, padding):
  return _depthwise_fwd_impl(x, kernel, stride, dilation, padding)


def _depthwise_transpose(g, kernel, in_hw, stride, dilation, padding):
  """Input gradient of `depthwise_conv2d`: f32[N, Ho, Wo, C] -> f32[N, H, W, C].

  The transposed convolution: a stride-1 depthwise conv of g, dilated by the stride and
  padded, with the spatially flipped kernel.
  """
  k = kernel.shape[0]
  lo = (k - 1) * dilation - padding
  (h, w), (ho, wo) = in_hw, g.shape[1:3]
  cfg = lambda size, o: (lo, size + padding - (o - 1) * stride - 1, stride - 1)
  gp = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), cfg(h, ho), cfg(w, wo), (0, 0, 0)))
  return _depthwise_fwd_impl(gp, kernel[::-1, ::-1], 1, dilation, 0)


def _depthwise_kernel_grad(x, g, k, stride, dilation, padding):
  """Kernel gradient of `depthwise_conv2d`, f32[k, k, 1, C]:
  dw[i, j, c] = sum_{n, y, x} xp[n, y*s + i*d, x*s + j*d, c] g[n, y, x, c].

  One matmul over (n, y) gives S[c, i, a, b] = sum_{n, y} xp[n, y*s + i*d, a, c]
  g[n, y, b, c] for every kernel row i, padded column a and output column b; dw[i, j]
  is the sum of S along a = b*s + j*d. It computes more than needed (all a, b), but on
  CPU it is 2x faster than k*k multiply-reduce passes, which XLA cannot fuse into one.
  """
  n, h, w, c = x.shape
  ho, wo = g.shape[1:3]
  xp = _pad_hw(x, padding)
  wp = w + 2 * padding
  # select[j, a, b] = 1 where a = b*s + j*d.
  select = np.zeros((k, wp, wo), np.float32)
  for j in range(k):
    select[j, j * dilation + stride * np.arange(wo), np.arange(wo)] = 1
  a = jnp.stack([lax.slice(xp, (0, i * dilation, 0, 0),
                           (n, i * dilation + (ho - 1) * stride + 1, wp, c), (1, stride, 1, 1))
                 for i in range(k)])
  s = jnp.einsum("inyac,nybc->ciab", a, g)
  return jnp.einsum("ciab,jab->ijc", s, jnp.asarray(select, s.dtype))[:, :, None, :]


def _depthwise_fwd(x, kernel, stride, dilation, padding):
  return _depthwise_fwd_impl(x, kernel, stride, dilation, padding), (x, kernel)


def _depthwise_bwd(stride, dilation, padding, residuals, g):
  x, kernel = residuals
  return (_depthwise_transpose(g, kernel, x.shape[1:3], stride, dilation, padding),
          _depthwise_kernel_grad(x, g, kernel.shape[0], stride, dilation, padding))


_depthwise_conv2d_vjp.defvjp(_depthwise_fwd, _depthwise_bwd)


def _place(tap_grad, i, j, stride, dilation, padding, in_hw):
  """Transpose of one window tap: scatters f32[N, ho, wo, C] back onto f32[N, H, W, C]."""
  ho, wo = tap_grad.shape[1:3]
  cfg = lambda off, size, o: (off - padding, size + padding - off - (o - 1) * stride - 1, stride - 1)
  return lax.pad(tap_grad, jnp.zeros((), tap_grad.dtype),
                 ((0, 0, 0), cfg(i * dilation, in_hw[0], ho), cfg(j * dilation, in_hw[1], wo),
                  (0, 0, 0)))


def max_pool2d(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
  """k x k max pool, PyTorch `MaxPool2d` semantics: f32[N, H, W, C] -> f32[N, Ho, Wo, C].

  Padded cells never win. As a max of strided shifts it is one fused loop on CPU; the
  gradient goes to the first maximum in row-major window order, as PyTorch routes it
  (XLA's select-and-scatter is several times slower here). Under
  `dnas.autodiff.forward_mode_autodiff()` JAX differentiates the max of shifts itself
  (ties split the gradient).
  """
  if autodiff.plain_autodiff():
    return _max_pool_impl(x, k, stride, padding)
  return _max_pool2d_vjp(x, k, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool2d_vjp(x, k, stride, padding):
  return _max_pool_impl(x, k, stride, padding)


def _max_pool_impl(x, k, stride, padding):
  ho, wo = (_out_size(s, k, stride, 1, padding) for s in x.shape[1:3])
  (x,) = _materialize(x)
  out = None
  for _, _, tap in _windows(_pad_hw(x, padding, value=-jnp.inf), k, stride, 1, ho, wo):
    out = tap if out is None else jnp.maximum(out, tap)
  return _materialize(out)[0]


def _max_pool_fwd(x, k, stride, padding):
  out = _max_pool_impl(x, k, stride, padding)
  return out, (x, out)


def _max_pool_bwd(k, stride, padding, residuals, g):
  x, out = residuals
  ho, wo = out.shape[1:3]
  taps = list(_windows(_pad_hw(x, padding, value=-jnp.inf), k, stride, 1, ho, wo))
  # Index of the first tap that attains the max, built back to front; a float (exact
  # for these small integers) so that `_materialize` makes it one buffer.
  first = jnp.full(out.shape, len(taps) - 1, g.dtype)
  for t in reversed(range(len(taps) - 1)):
    first = jnp.where(taps[t][2] == out, t, first)
  first, g = _materialize(first, g)
  dx = None
  for t, (i, j, _) in enumerate(taps):
    part = _place(jnp.where(first == t, g, 0), i, j, stride, 1, padding, x.shape[1:3])
    dx = part if dx is None else dx + part
  return _materialize(dx)


_max_pool2d_vjp.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool2d(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
  """k x k average pool, PyTorch `AvgPool2d(count_include_pad=False)`: each output
  divides by the number of in-image pixels under its window. f32[N, H, W, C] ->
  f32[N, Ho, Wo, C]. A depthwise conv with a ones kernel, so it shares its fused loops
  and their gradients."""
  h, w = x.shape[1:3]
  ho, wo = _out_size(h, k, stride, 1, padding), _out_size(w, k, stride, 1, padding)
  total = depthwise_conv2d(x, jnp.ones((k, k, 1, x.shape[-1]), x.dtype), stride, 1, padding)
  # In-image counts per output position: static, computed on the host.
  ones = np.pad(np.ones((h, w)), padding)
  counts = sum(ones[i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
               for i in range(k) for j in range(k))
  return total * jnp.asarray(1.0 / counts, x.dtype)[None, :, :, None]


class DepthwiseConv(nnx.Module):
  """Depthwise conv, no bias: f32[N, H, W, C] -> f32[N, Ho, Wo, C]."""

  def __init__(self, C: int, kernel_size: int, stride: int, padding: int,
               dilation: int = 1, *, rngs: nnx.Rngs):
    self.stride, self.padding, self.dilation = stride, padding, dilation
    self.kernel = nnx.Param(torch_kernel_init(rngs.params(), (kernel_size, kernel_size, 1, C)))

  def __call__(self, x):
    return depthwise_conv2d(x, self.kernel[...], self.stride, self.dilation, self.padding)


class Conv1x1(nnx.Module):
  """1x1 conv, no bias, optional stride: a matmul over channels.

  f32[N, H, W, C_in] -> f32[N, ceil(H/s), ceil(W/s), C_out]. Kernel f32[1, 1, C_in, C_out]
  (the `nnx.Conv` layout).
  """

  def __init__(self, C_in: int, C_out: int, stride: int = 1, *, rngs: nnx.Rngs):
    self.stride = stride
    self.kernel = nnx.Param(torch_kernel_init(rngs.params(), (1, 1, C_in, C_out)))

  def __call__(self, x):
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    return jnp.einsum("nhwc,co->nhwo", x, self.kernel[0, 0])


def conv2d(C_in: int, C_out: int, kernel_size, stride=1, padding=0, *,
           rngs: nnx.Rngs) -> nnx.Module:
  """PyTorch `Conv2d(bias=False)` with explicit symmetric padding (never 'SAME').

  kernel_size, stride, padding: int or (h, w) pairs.
  """
  pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
  kh, kw = pair(kernel_size)
  if (kh, kw) == (1, 1) and pair(padding) == (0, 0) and pair(stride)[0] == pair(stride)[1]:
    return Conv1x1(C_in, C_out, pair(stride)[0], rngs=rngs)
  ph, pw = pair(padding)
  return nnx.Conv(C_in, C_out, (kh, kw), strides=pair(stride), padding=((ph, ph), (pw, pw)),
                  use_bias=False, kernel_init=torch_kernel_init, rngs=rngs)


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
