"""Spatial kernels of the search spaces, portable by default, fast where it pays.

Each kernel has one reference implementation made of XLA's own ops (grouped
convolution, `reduce_window`), which every backend compiles well, and a CPU fast path
(`dnas.cpu`). `lax.platform_dependent` chooses between them by the platform the program
is lowered for, not by the host that traces it: a step jitted on a CPU runs the fast
path, and the same step exported for `cuda` or `tpu` from that CPU contains only XLA's
ops (tests/test_kernels.py). Both paths agree in value and in first and second
derivatives.

Layout is NHWC; kernels are f32[k, k, 1, C] (HWIO with one input channel per group).
Semantics are PyTorch's: symmetric zero padding, `MaxPool2d` whose padding never wins
and whose gradient goes to the first maximum in row-major window order, `AvgPool2d` with
`count_include_pad=False`.
"""

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dnas import autodiff, cpu

_NHWC = ("NHWC", "HWIO", "NHWC")


def out_size(size: int, k: int, stride: int, dilation: int, padding: int) -> int:
  """Output length of a window op along one axis (PyTorch's floor formula)."""
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _depthwise_xla(x, kernel, stride, dilation, padding):
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding),) * 2, rhs_dilation=(dilation,) * 2,
      dimension_numbers=_NHWC, feature_group_count=x.shape[-1])


def _window(k, stride, padding):
  return dict(window_dimensions=(1, k, k, 1), window_strides=(1, stride, stride, 1),
              padding=((0, 0), (padding, padding), (padding, padding), (0, 0)))


def _max_pool_xla(x, k, stride, padding):
  # JAX differentiates reduce_window max through XLA's select-and-scatter with a >=
  # selection, which keeps the first maximum of each window.
  return lax.reduce_window(x, -jnp.inf, lax.max, **_window(k, stride, padding))


def _sum_pool_xla(x, k, stride, padding):
  # A constant init value (not a traced one) makes JAX use its differentiable sum pool.
  return lax.reduce_window(x, np.zeros((), x.dtype), lax.add, **_window(k, stride, padding))


# Each kernel is a custom VJP whose forward and backward each pick their platform's code:
# differentiating a `platform_dependent` (a `cond`) directly made JAX partial-evaluate and
# transpose both branches, which doubled the tracing time of the CIFAR search step
# (BUILD_NOTES.md, "Portable kernels"). Under `dnas.autodiff.forward_mode_autodiff()`
# (forward mode, which custom VJPs refuse) both paths are plain JAX functions.

# The platform a program is traced for, when it is known to run on this process's devices
# (`local_platform`); None: `lax.platform_dependent`, which traces both paths (and, inside
# `vmap`, batches both): two thirds of the time to trace the default search step
# (BUILD_NOTES.md, "Compile time").
_PLATFORM = contextvars.ContextVar("dnas_kernels_platform", default=None)


@contextlib.contextmanager
def local_platform(platform: str | None = None):
  """Within: the kernels take `platform`'s path (default: this process's backend) as they
  are traced, instead of a `lax.platform_dependent` of both. Only for programs compiled
  for this process's own devices; a program exported for other platforms (`jax.export`)
  must be traced outside, so that it carries no CPU path to a GPU or TPU."""
  token = _PLATFORM.set(platform or jax.default_backend())
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def for_local_devices(fn):
  """`fn` traced under `local_platform()`: for `jax.jit` of a step that runs here."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with local_platform():
      return fn(*args, **kwargs)
  return traced


def _dispatch(args, cpu_fn, xla_fn):
  platform = _PLATFORM.get()
  if platform is None:
    return lax.platform_dependent(*args, cpu=cpu_fn, default=xla_fn)
  return (cpu_fn if platform == "cpu" else xla_fn)(*args)


def _xla_vjp(fn, *primals):
  """The backward pass of XLA's own op: JAX's derivative of `fn` at `primals`."""
  return lambda g: jax.vjp(fn, *primals)[1](g)


def _depthwise_forward(x, kernel, stride, dilation, padding):
  return _dispatch((x, kernel), lambda x, w: cpu.depthwise_forward(x, w, stride, dilation,
                                                                   padding),
                   lambda x, w: _depthwise_xla(x, w, stride, dilation, padding))


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, dilation: int,
                     padding: int) -> jax.Array:
  """Depthwise 2-D cross-correlation, PyTorch `conv2d(groups=C)`.

  Args:
    x: f32[N, H, W, C].
    kernel: f32[k, k, 1, C].
    stride, dilation, padding: ints; the padding is symmetric.

  Returns:
    f32[N, Ho, Wo, C], Ho = out_size(H, k, stride, dilation, padding).
  """
  fn = _depthwise_forward if autodiff.plain_autodiff() else _depthwise_vjp
  return fn(x, kernel, stride, dilation, padding)


def _depthwise_bwd(stride, dilation, padding, residuals, g):
  args = (stride, dilation, padding)
  return _dispatch(
      (*residuals, g), lambda x, w, g: cpu.depthwise_backward(x, w, g, *args),
      lambda x, w, g: _xla_vjp(lambda x, w: _depthwise_xla(x, w, *args), x, w)(g))


_depthwise_vjp = jax.custom_vjp(_depthwise_forward, nondiff_argnums=(2, 3, 4))
_depthwise_vjp.defvjp(lambda x, w, *args: (_depthwise_forward(x, w, *args), (x, w)),
                      _depthwise_bwd)


def _max_pool_forward(x, k, stride, padding):
  return _dispatch((x,), lambda x: cpu.max_pool_forward(x, k, stride, padding),
                   lambda x: _max_pool_xla(x, k, stride, padding))


def max_pool2d(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
  """k x k max pool over -inf padding: f32[N, H, W, C] -> f32[N, Ho, Wo, C]."""
  fn = _max_pool_forward if autodiff.plain_autodiff() else _max_pool_vjp
  return fn(x, k, stride, padding)


def _max_pool_fwd(x, k, stride, padding):
  out = _max_pool_forward(x, k, stride, padding)
  return out, (x, out)


def _max_pool_bwd(k, stride, padding, residuals, g):
  return (_dispatch(
      (*residuals, g), lambda x, out, g: cpu.max_pool_backward(x, out, g, k, stride, padding),
      lambda x, out, g: _xla_vjp(lambda x: _max_pool_xla(x, k, stride, padding), x)(g)[0]),)


_max_pool_vjp = jax.custom_vjp(_max_pool_forward, nondiff_argnums=(1, 2, 3))
_max_pool_vjp.defvjp(_max_pool_fwd, _max_pool_bwd)


def _sum_pool_forward(x, k, stride, padding):
  return _dispatch((x,), lambda x: cpu.sum_pool_forward(x, k, stride, padding),
                   lambda x: _sum_pool_xla(x, k, stride, padding))


def _sum_pool(x, k, stride, padding):
  """k x k window sums over zero padding, f32[N, H, W, C] -> f32[N, Ho, Wo, C]."""
  fn = _sum_pool_forward if autodiff.plain_autodiff() else _sum_pool_vjp
  return fn(x, k, stride, padding)


def _sum_pool_bwd(k, stride, padding, x, g):
  return (_dispatch(
      (x, g), lambda x, g: cpu.sum_pool_backward(x, g, k, stride, padding),
      lambda x, g: _xla_vjp(lambda x: _sum_pool_xla(x, k, stride, padding), x)(g)[0]),)


_sum_pool_vjp = jax.custom_vjp(_sum_pool_forward, nondiff_argnums=(1, 2, 3))
_sum_pool_vjp.defvjp(lambda x, *args: (_sum_pool_forward(x, *args), x), _sum_pool_bwd)


@functools.cache
def _inverse_counts(h, w, k, stride, padding):
  """1 / (number of in-image pixels under each window), f64[Ho, Wo], on the host."""
  ho, wo = out_size(h, k, stride, 1, padding), out_size(w, k, stride, 1, padding)
  ones = np.pad(np.ones((h, w)), padding)
  counts = sum(ones[i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
               for i in range(k) for j in range(k))
  return 1.0 / counts


def avg_pool2d(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
  """k x k average pool, PyTorch `AvgPool2d(count_include_pad=False)`: each output
  divides its window sum by the number of in-image pixels under the window.
  f32[N, H, W, C] -> f32[N, Ho, Wo, C]."""
  total = _sum_pool(x, k, stride, padding)
  inv = _inverse_counts(x.shape[1], x.shape[2], k, stride, padding)
  return total * jnp.asarray(inv, x.dtype)[None, :, :, None]


def fusion_barrier(x: jax.Array) -> jax.Array:
  """The identity, with a buffer of its own on CPU (`dnas.cpu.fusion_barrier`) and
  nothing at all elsewhere: other backends' fusion does not recompute a producer per
  consumer the way XLA:CPU's does."""
  return _dispatch((x,), cpu.fusion_barrier, lambda x: x)
