"""PyTorch's layers as the reference search spaces use them, in NNX and NHWC.

Shared by every space (`dnas.spaces.darts`, `dnas.spaces.nb201`): BatchNorm with PyTorch's
statistics, convolutions and linear layers with PyTorch's default initialisation, so that
parameter counts and training runs are comparable with the reference code.
"""

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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
  `affine=False` has no scale and shift (the supernet's BN); `track_running_stats=False`
  keeps no running values and normalises with the batch's in both modes (PyTorch's
  option of that name; NAS-Bench-201's search with BN=0).
  """

  def __init__(self, C: int, affine: bool = True, *, momentum: float = BN_MOMENTUM,
               eps: float = BN_EPS, track_running_stats: bool = True):
    self.momentum, self.eps, self.use_running_average = momentum, eps, False
    self.scale = nnx.Param(jnp.asarray(np.ones(C, np.float32))) if affine else None
    self.bias = nnx.Param(jnp.asarray(np.zeros(C, np.float32))) if affine else None
    self.track_running_stats = track_running_stats
    if track_running_stats:
      self.mean = nnx.BatchStat(jnp.asarray(np.zeros(C, np.float32)))
      self.var = nnx.BatchStat(jnp.asarray(np.ones(C, np.float32)))

  def __call__(self, x):
    if self.use_running_average and self.track_running_stats:
      mean, var = self.mean.get_value(), self.var.get_value()
    else:
      # Statistics in at least float32 (bfloat16 activations; float64 stays float64).
      axes = tuple(range(x.ndim - 1))
      stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
      mean = jnp.mean(x, axes, dtype=stat_dtype)
      var = jnp.mean(jnp.square(x.astype(stat_dtype) - mean), axes)
    if not self.use_running_average and self.track_running_stats:
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


def batch_norm(C: int, affine: bool, rngs: nnx.Rngs | None = None, *,
               track_running_stats: bool = True) -> BatchNorm:
  del rngs  # BatchNorm has no random initialisation.
  return BatchNorm(C, affine, track_running_stats=track_running_stats)


def linear(C_in: int, C_out: int, *, rngs: nnx.Rngs) -> nnx.Linear:
  """PyTorch `nn.Linear` (weight and bias uniform in +-1/sqrt(C_in))."""
  bias_init = lambda key, shape, dtype=jnp.float32: uniform_init(key, shape, C_in ** -0.5, dtype)
  return nnx.Linear(C_in, C_out, kernel_init=torch_kernel_init, bias_init=bias_init, rngs=rngs)


class Conv1x1(nnx.Module):
  """1x1 conv, optional stride and bias: a matmul over channels.

  f32[N, H, W, C_in] -> f32[N, ceil(H/s), ceil(W/s), C_out]. Kernel f32[1, 1, C_in, C_out]
  (the `nnx.Conv` layout); bias f32[C_out] initialised as PyTorch's.
  """

  def __init__(self, C_in: int, C_out: int, stride: int = 1, *, bias: bool = False,
               rngs: nnx.Rngs):
    self.stride = stride
    self.kernel = nnx.Param(torch_kernel_init(rngs.params(), (1, 1, C_in, C_out)))
    self.bias = (nnx.Param(uniform_init(rngs.params(), (C_out,), C_in ** -0.5)) if bias
                 else None)

  def __call__(self, x):
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    y = jnp.einsum("nhwc,co->nhwo", x, self.kernel[0, 0])
    return y if self.bias is None else y + self.bias[...]


def conv2d(C_in: int, C_out: int, kernel_size, stride=1, padding=0, *, bias: bool = False,
           rngs: nnx.Rngs) -> nnx.Module:
  """PyTorch `Conv2d` with explicit symmetric padding (never 'SAME'); `bias` as PyTorch's
  (uniform in +-1/sqrt(fan_in)).

  kernel_size, stride, padding: int or (h, w) pairs.
  """
  pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
  kh, kw = pair(kernel_size)
  if (kh, kw) == (1, 1) and pair(padding) == (0, 0) and pair(stride)[0] == pair(stride)[1]:
    return Conv1x1(C_in, C_out, pair(stride)[0], bias=bias, rngs=rngs)
  ph, pw = pair(padding)
  fan_in = kh * kw * C_in
  bias_init = lambda key, shape, dtype=jnp.float32: uniform_init(key, shape, fan_in ** -0.5, dtype)
  return nnx.Conv(C_in, C_out, (kh, kw), strides=pair(stride), padding=((ph, ph), (pw, pw)),
                  use_bias=bias, kernel_init=torch_kernel_init, bias_init=bias_init, rngs=rngs)


# Stacks of identical layers, run as one `lax.scan`: XLA compiles the layer once, not once
# per copy (on CPU compile time grows with the number of kernels).


def _signature(module: nnx.Module):
  graphdef, state = nnx.split(module)
  return graphdef, jax.tree.map(lambda v: (v.shape, v.dtype), state)


_UNROLLED = contextvars.ContextVar("dnas_unrolled", default=False)


@contextlib.contextmanager
def unrolled():
  """Inside it, networks trace their stacks of identical layers as a Python loop: for the
  converters to formats without loops (ONNX, TFLite), whose runtimes fuse across layers,
  and for latency timing and tracing. JAX's trace caches do not see it: a function
  already traced outside keeps its scans (`unrolled_fn` makes a new one)."""
  token = _UNROLLED.set(True)
  try:
    yield
  finally:
    _UNROLLED.reset(token)


def unrolled_fn(fn):
  """A new function: `fn` traced inside `unrolled()` wherever it is traced (no trace of
  `fn` cached outside is reused)."""
  def call(*args, **kwargs):
    with unrolled():
      return fn(*args, **kwargs)
  return call


def identical_runs(layers, boundaries=(), scan: bool = True) -> list[range]:
  """Consecutive runs of `layers` with equal graph definitions and variable shapes, in
  order, covering all of them; a run ends after each index in `boundaries` (a layer
  whose output is read elsewhere). Runs of one layer each when `scan` is off or inside
  `unrolled()`."""
  if not scan or _UNROLLED.get():
    return [range(i, i + 1) for i in range(len(layers))]
  runs, start, prev = [], 0, None
  for i, layer in enumerate(layers):
    sig = _signature(layer)
    if i and (sig != prev or i - 1 in boundaries):
      runs.append(range(start, i))
      start = i
    prev = sig
  if len(layers):
    runs.append(range(start, len(layers)))
  return runs


def scan_layers(layers, fn, carry, xs=None, *, remat: bool = False):
  """`carry = fn(layers[i], carry, xs[i])` for i in order, as one `lax.scan` over the
  layers' stacked variables (they must be structurally identical: `identical_runs`).

  Same values and derivatives as the Python loop. The layers' non-parameter variables
  (BatchNorm statistics, RNG counters) are written back to each layer; their parameters
  and the module tree are unchanged, so checkpoints and parameter counts do not see the
  scan. `fn` must return a carry of the shapes and dtypes it got (a layer that changes
  them cannot be scanned), and calls inside the scan see per-iteration copies of the
  layers (tools that find a module by identity, such as `dnas.latency.mixed`, need the
  loop).

  Args:
    layers: L modules of one structure.
    fn: (module, carry, x) -> carry, with the same carry structure and shapes.
    carry: any pytree of arrays.
    xs: a pytree of arrays with leading axis L (or None), sliced per layer.
    remat: recompute each layer's activations in the backward pass (`jax.checkpoint`).

  Returns:
    The carry after the last layer.
  """
  graphdef, _ = nnx.split(layers[0])
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *[nnx.state(m) for m in layers])

  def body(carry, inputs):
    state, x = inputs
    module = nnx.merge(graphdef, state)
    carry = fn(module, carry, x)
    return carry, nnx.state(module, nnx.Not(nnx.Param))

  carry, updated = jax.lax.scan(jax.checkpoint(body) if remat else body, carry, (stacked, xs),
                                length=len(layers))  # layers without variables too
  for i, module in enumerate(layers):
    nnx.update(module, jax.tree.map(lambda v: v[i], updated))
  return carry
