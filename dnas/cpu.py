"""The CPU fast path: everything dnas does only because XLA:CPU compiles the program.

`dnas.kernels` picks these kernels by compile target (`lax.platform_dependent`), so a
program compiled or exported for a GPU or TPU never contains them:
- spatial kernels as k*k shifted slices with hand-written backward passes
  (`depthwise_forward`/`_backward`, `max_pool_*`, `sum_pool_*`): XLA:CPU's grouped
  convolution and select-and-scatter are 4-9x slower here;
- `fusion_barrier`: an identity matmul that stops XLA:CPU from recomputing a producer in
  every consumer;
- the XLA:CPU flags (`xla_cpu_flags`) and `compile_then_trim`, which hands the
  compiler's freed memory back to the OS before the first step runs.

Layout is NHWC. The kernels equal their portable versions in `dnas.kernels` in value and
in first and second derivatives (tests/test_kernels.py).
"""

import ctypes
import threading
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax


def _pad_hw(x, lo, hi=None, interior=0, value=0.0):
  """Pads (or crops, if negative) the H and W axes of f32[N, H, W, C]."""
  hi = lo if hi is None else hi
  cfg = ((0, 0, 0), (lo, hi, interior), (lo, hi, interior), (0, 0, 0))
  return lax.pad(x, jnp.asarray(value, x.dtype), cfg)


def _out_size(size, k, stride, dilation, padding):
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _dot_identity(x):
  """x @ I over the last axis: equal to x (for finite x), and a matmul, which XLA:CPU
  never fuses into a loop."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
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


def _depthwise_transpose(g, kernel, in_hw, stride, dilation, padding):
  """Input gradient of `depthwise_forward`: f32[N, Ho, Wo, C] -> f32[N, H, W, C].

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
  """Kernel gradient of `depthwise_forward`, f32[k, k, 1, C]:
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


def _place(tap_grad, i, j, stride, dilation, padding, in_hw):
  """Transpose of one window tap: scatters f32[N, ho, wo, C] back onto f32[N, H, W, C]."""
  ho, wo = tap_grad.shape[1:3]
  cfg = lambda off, size, o: (off - padding, size + padding - off - (o - 1) * stride - 1, stride - 1)
  return lax.pad(tap_grad, jnp.zeros((), tap_grad.dtype),
                 ((0, 0, 0), cfg(i * dilation, in_hw[0], ho), cfg(j * dilation, in_hw[1], wo),
                  (0, 0, 0)))


def _max_pool_impl(x, k, stride, padding):
  ho, wo = (_out_size(s, k, stride, 1, padding) for s in x.shape[1:3])
  (x,) = _materialize(x)
  out = None
  for _, _, tap in _windows(_pad_hw(x, padding, value=-jnp.inf), k, stride, 1, ho, wo):
    out = tap if out is None else jnp.maximum(out, tap)
  return _materialize(out)[0]


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



def _ones_kernel(x, k):
  return jnp.ones((k, k, 1, x.shape[-1]), x.dtype)


# The forward and backward passes, which `dnas.kernels`' custom VJPs call in programs
# lowered for the CPU (the backward passes are each other's transposes, so derivatives
# of every order reuse them). Under `dnas.autodiff.forward_mode_autodiff()` the forward
# passes are differentiated by JAX itself (max pool's ties then split the gradient).

def depthwise_forward(x, kernel, stride, dilation, padding):
  """Depthwise 2-D cross-correlation, PyTorch `conv2d(groups=C)`: f32[N, H, W, C] with
  kernel f32[k, k, 1, C] -> f32[N, Ho, Wo, C].

  Written as k*k strided shifts of the padded input, which XLA fuses into one loop; the
  input gradient is the same kind of loop over the dilated gradient with the flipped
  kernel, and the kernel gradient a matmul (`_depthwise_kernel_grad`). On CPU this is
  4-9x faster, forward and backward, than XLA's grouped convolution, whose kernel
  gradient is lowered as a dense convolution.
  """
  return _depthwise_fwd_impl(x, kernel, stride, dilation, padding)


def depthwise_backward(x, kernel, g, stride, dilation, padding):
  """(dx, dkernel) of `depthwise_forward` for the output cotangent g."""
  return (_depthwise_transpose(g, kernel, x.shape[1:3], stride, dilation, padding),
          _depthwise_kernel_grad(x, g, kernel.shape[0], stride, dilation, padding))


def max_pool_forward(x, k, stride, padding):
  """k x k max pool, PyTorch `MaxPool2d`: padded cells never win. A max of strided
  shifts, one fused loop on CPU (XLA's select-and-scatter gradient is several times
  slower here)."""
  return _max_pool_impl(x, k, stride, padding)


def max_pool_backward(x, out, g, k, stride, padding):
  """dx of `max_pool_forward` (out its output): the first maximum of each window in
  row-major order takes the gradient, as PyTorch routes it."""
  return _max_pool_bwd(k, stride, padding, (x, out), g)[0]


def sum_pool_forward(x, k, stride, padding):
  """k x k window sums over zero padding: a depthwise conv with a ones kernel."""
  return _depthwise_fwd_impl(x, _ones_kernel(x, k), stride, 1, padding)


def sum_pool_backward(x, g, k, stride, padding):
  return _depthwise_transpose(g, _ones_kernel(x, k), x.shape[1:3], stride, 1, padding)


# XLA:CPU's default concurrency-optimised scheduler keeps many more buffers alive.
# Measured on 3 stacked CIFAR search cells (batch 32, gradient step): temporary memory
# 4.43 -> 2.13 GiB and step 4.7-5.2 -> 3.2-3.5 s with it off; `jax.checkpoint` saves
# memory only with it off. Passing it as a jit `compiler_options` has no effect in
# jax 0.10.2; it must be in XLA_FLAGS before the backend starts (`utils.configure_xla`).
# Other backends ignore it.
XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)

# XLA:CPU's YNNPACK fusions (an empty list: none). Loading a cached program rebuilds
# each fusion's thunk by a search over the whole module: the default search step loaded
# in 28-38 s with them, 9-10 s without, its steps and CIFAR-10's as fast (BUILD_NOTES.md,
# "Compile time"). An experimental flag: XLA aborts on a flag it does not know, so only
# for the jaxlib it was measured with.
XLA_CPU_FLAGS_JAXLIB_0_10 = ("--xla_cpu_experimental_ynn_fusion_type=",)


def xla_cpu_flags() -> tuple[str, ...]:
  """The XLA:CPU flags `utils.configure_xla` sets for the installed jaxlib."""
  on_0_10 = jaxlib.__version__.split(".")[:2] == ["0", "10"]
  return XLA_CPU_FLAGS + (XLA_CPU_FLAGS_JAXLIB_0_10 if on_0_10 else ())


def release_free_memory() -> None:
  """glibc: returns freed heap pages to the OS (`malloc_trim(0)`); elsewhere nothing.

  XLA:CPU compilation of a supernet peaks at several GiB and leaves its freed memory
  resident in the heap (5.1 -> 2.6 GiB resident after trimming, CIFAR-10 search step).
  """
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


# (name, trace_s, compile_s) of every program `compile_then_trim` compiled, in order:
# what `scripts/bench_step.py` reports as compile time.
COMPILE_LOG: list[dict] = []


def compile_then_trim(jitted):
  """On a CPU host: `jitted` (a `jax.jit` function) compiled ahead of its first call for
  each argument signature (tree structure, shapes, dtypes, shardings), after which the
  compiler's freed memory goes back to the OS (`release_free_memory`). Elsewhere, or for
  a function without `lower` (a step made of such programs), `jitted` itself: on a GPU
  or TPU host the compiler's memory is not the device's, and the signature check would
  cost host time on every step.

  Compiling on the first call instead would leave that memory resident while the
  first execution allocates its buffers beside it. At CIFAR-10 search shapes on CPU this
  takes the first-order step's peak RSS from 11.74 to 9.24 GiB (BUILD_NOTES.md, "Memory
  below the reference").
  """
  if not hasattr(jitted, "lower") or jax.default_backend() != "cpu":
    return jitted
  compiled = {}
  lock = threading.Lock()  # one compile per signature, also across threads

  def compile_for(args):
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((tuple(jnp.shape(x)),
                           x.dtype if hasattr(x, "dtype") else jnp.result_type(x),
                           getattr(x, "sharding", None)) for x in leaves))
    with lock:
      if key not in compiled:
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        compiled[key] = lowered.compile()
        COMPILE_LOG.append(dict(name=getattr(jitted, "__name__", "?"), trace_s=t1 - t0,
                                compile_s=time.perf_counter() - t1))
        release_free_memory()
    return compiled[key]

  def call(*args):
    return compile_for(args)(*args)
  # Compiles for arguments like these (arrays or `jax.ShapeDtypeStruct`s with their
  # shardings) without running: a later call with such arguments finds it compiled.
  call.precompile = lambda *args: compile_for(args) and None
  return call
