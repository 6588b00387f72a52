"""dnas.kernels: the portable XLA kernels and the CPU fast path (dnas.cpu, which the
kernels' custom VJPs pick in programs lowered for this CPU) agree to second order, and the
program lowered for each platform holds only its own path."""

import collections
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import autodiff, cpu, kernels
from dnas.spaces.darts import search


def _x(shape, seed=None):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _paths(name, *args):
  """(portable, CPU fast path) of a kernel as functions of its array arguments: XLA's op
  with JAX's derivatives, and `dnas.kernels`' function, whose custom VJP picks the
  `dnas.cpu` passes in programs lowered for this CPU."""
  portable = {"depthwise": kernels._depthwise_xla, "max": kernels._max_pool_xla,
              "sum": kernels._sum_pool_xla}[name]
  fast = {"depthwise": kernels.depthwise_conv2d, "max": kernels.max_pool2d,
          "sum": kernels._sum_pool}[name]
  return (lambda *a: portable(*a, *args)), (lambda *a: fast(*a, *args))


def _assert_agree_to_second_order(name, args, inputs, atol=1e-4):
  """Values, gradients, grad of a gradient norm, and forward-over-reverse (what
  order="second" traces inside `forward_mode_autodiff`) all agree."""
  portable, fast = _paths(name, *args)
  chex.assert_trees_all_close(fast(*inputs), portable(*inputs), atol=1e-5)
  argnums = tuple(range(len(inputs)))
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  grad = lambda f: jax.grad(loss(f), argnums)
  chex.assert_trees_all_close(grad(fast)(*inputs), grad(portable)(*inputs), atol=atol)
  # d/d(inputs) |grad|^2: reverse over reverse, through the custom VJPs' own backward.
  gg = lambda f: jax.grad(lambda *a: sum(jnp.sum(g ** 2) for g in grad(f)(*a)), argnums)
  chex.assert_trees_all_close(gg(fast)(*inputs), gg(portable)(*inputs), atol=10 * atol,
                              rtol=1e-4)
  tangents = tuple(_x(a.shape, 7 + i) for i, a in enumerate(inputs))
  hvp = lambda f: jax.jvp(grad(f), inputs, tangents)
  with autodiff.forward_mode_autodiff():
    chex.assert_trees_all_close(hvp(fast), hvp(portable), atol=10 * atol, rtol=1e-4)


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 1, 2)])
def test_depthwise_conv_paths_agree(k, stride, dilation):
  C, pad = 5, dilation * (k - 1) // 2
  _assert_agree_to_second_order("depthwise", (stride, dilation, pad),
                                (_x((2, 9, 9, C), 0), _x((k, k, 1, C), 1)))


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (5, 3, 0)])
def test_sum_pool_paths_agree(k, stride, pad):
  _assert_agree_to_second_order("sum", (k, stride, pad), (_x((2, 8, 8, 3), 2),))


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_paths_agree(stride):
  # Random inputs: no ties, where forward mode over the fast path would split gradients.
  _assert_agree_to_second_order("max", (3, stride, 1), (_x((2, 7, 7, 3), 3),))


@pytest.mark.parametrize("path", ["portable", "fast"])
def test_max_pool_gradient_goes_to_first_max_like_pytorch(path):
  # Ties: PyTorch routes the gradient to the first maximum in row-major window order.
  pool = dict(zip(("portable", "fast"), _paths("max", 3, 2, 1)))[path]
  g = jax.grad(lambda x: jnp.sum(pool(x)))(jnp.zeros((1, 4, 4, 1)))
  expected = np.zeros((4, 4))
  expected[:2, :2] = 1
  np.testing.assert_array_equal(g[0, :, :, 0], expected)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (5, 3, 0)])
def test_avg_pool_matches_flax_count_include_pad_false(k, stride, pad):
  x = _x((2, 8, 8, 3), 4)
  ref = lambda x: nnx.avg_pool(x, (k, k), strides=(stride, stride), padding=((pad, pad),) * 2,
                               count_include_pad=False)
  ours = lambda x: kernels.avg_pool2d(x, k, stride, pad)
  chex.assert_trees_all_close(ours(x), ref(x), atol=1e-6)
  f = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))
  chex.assert_trees_all_close(f(ours)(x), f(ref)(x), atol=1e-6)


def test_max_pool_ignores_padding():
  y = kernels.max_pool2d(-jnp.ones((1, 4, 4, 2)), 3, 2, 1)
  np.testing.assert_array_equal(y, -jnp.ones((1, 2, 2, 2)))


def test_fusion_barrier_is_identity_in_value_and_gradient():
  x, g = _x((2, 3, 3, 5), 5), _x((2, 3, 3, 5), 6)
  y, vjp = jax.vjp(jax.jit(kernels.fusion_barrier), x)
  np.testing.assert_array_equal(y, x)
  np.testing.assert_array_equal(vjp(g)[0], g)


def _op_counts(text):
  return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))


def _grouped_convs(text):
  return sum(int(n) > 1 for n in re.findall(r"feature_group_count = (\d+)", text))


def _identity_matmuls(text):
  """dot_generals at HIGHEST precision: only the CPU fusion barriers make those here."""
  return sum("dot_general" in line and "HIGHEST" in line for line in text.splitlines())


@pytest.fixture(scope="module")
def cell_grad_lowered():
  """The gradient of a tiny supernet cell, lowered for each platform from this CPU."""
  model = search.Network(C=4, num_classes=3, layers=1, steps=2, multiplier=2, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = _x((2, 8, 8, 3), 8)

  def loss(state):
    return jnp.sum(nnx.merge(graphdef, state)(x))

  traced = jax.jit(jax.grad(loss)).trace(state)
  return {p: traced.lower(lowering_platforms=(p,)).as_text() for p in ("cpu", "cuda", "tpu")}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerator_programs_hold_no_cpu_tricks(cell_grad_lowered, platform):
  text = cell_grad_lowered[platform]
  counts = _op_counts(text)
  assert _identity_matmuls(text) == 0
  # Depthwise convs as grouped convolutions, not k*k shifted slices (the slices left
  # unstack the supernet's stacked weights).
  assert _grouped_convs(text) > 0
  assert counts["slice"] * 10 < _op_counts(cell_grad_lowered["cpu"])["slice"], counts["slice"]
  assert counts["reduce_window"] > 0


def test_cpu_program_takes_the_fast_path(cell_grad_lowered):
  text = cell_grad_lowered["cpu"]
  assert _identity_matmuls(text) > 0
  assert _op_counts(text)["slice"] > 100
  assert _grouped_convs(text) == 0


def test_jax_export_for_accelerators_from_cpu_host():
  # jax.export picks branches by its platforms too (what `dnas.export` calls).
  model = search.Network(C=4, num_classes=3, layers=1, steps=2, multiplier=2, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  exported = jax.export.export(fn, platforms=("cuda", "tpu"))(state, _x((2, 8, 8, 3), 9))
  text = exported.mlir_module()
  assert _identity_matmuls(text) == 0 and _grouped_convs(text) > 0


def test_local_platform_traces_one_path_and_computes_the_same():
  # The loops trace their steps under `local_platform` (one path, no `platform_dependent`
  # to trace and batch): the same values, bitwise, and the same kernels in the program.
  model = search.Network(C=4, num_classes=3, layers=1, steps=2, multiplier=2, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = _x((2, 8, 8, 3), 8)
  grad = jax.grad(lambda state: jnp.sum(nnx.merge(graphdef, state)(x)))
  both, local = jax.jit(grad), jax.jit(kernels.for_local_devices(grad))
  assert "platform_index" in str(both.trace(state).jaxpr)
  assert "platform_index" not in str(local.trace(state).jaxpr)
  chex.assert_trees_all_equal(local(state), both(state))
  text = local.trace(state).lower(lowering_platforms=("cpu",)).as_text()
  assert _identity_matmuls(text) > 0 and _grouped_convs(text) == 0
  # The platform named, not the host's: a trace for a GPU takes XLA's own ops.
  with kernels.local_platform("cuda"):
    cuda = jax.jit(grad).trace(state).lower(lowering_platforms=("cuda",)).as_text()
  assert _identity_matmuls(cuda) == 0 and _grouped_convs(cuda) > 0


def test_xla_cpu_flags_leave_out_ynnpack_fusions_on_the_jaxlib_measured(monkeypatch):
  # conftest.py configured XLA before the backend started: a convolution's gradient
  # compiles without YNNPACK fusions, whose cached programs load 3x slower.
  import jaxlib  # pylint: disable=import-outside-toplevel
  on_0_10 = jaxlib.__version__.split(".")[:2] == ["0", "10"]
  assert (cpu.XLA_CPU_FLAGS_JAXLIB_0_10[0] in os.environ["XLA_FLAGS"].split()) == on_0_10
  if on_0_10 and jax.default_backend() == "cpu":
    def f(x, w):
      y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(jnp.maximum(y, 0.0) ** 2)
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    assert "__ynn_fusion" not in jax.jit(jax.grad(f, argnums=1)).lower(x, w).compile().as_text()
  # Another jaxlib might not know the flag (XLA aborts on unknown flags): not set there.
  monkeypatch.setattr(jaxlib, "__version__", "0.11.0")
  assert cpu.xla_cpu_flags() == cpu.XLA_CPU_FLAGS
