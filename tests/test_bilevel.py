"""Bilevel steps on a tiny supernet: phase separation, determinism, and the exactness of
the second-order hypergradient (float64, in a subprocess because x64 is process-wide)."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.extend
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dnas import bilevel, cpu, execution, hypergrad, optim, parallel
from dnas.spaces import darts

N, H = 4, 6
FOUR_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def _batch(rng, n=N):
  return dict(image=jnp.asarray(rng.standard_normal((n, H, H, 1)), jnp.float32),
              label=jnp.asarray(rng.integers(0, 3, n), jnp.int32))


@pytest.fixture(scope="module")
def parts():
  """(graphdef, state, w_tx, a_tx, schedule) of the tiny supernet the tests step: four
  kinds of op (none, a pool, the identity, a convolution) cover what a step treats
  differently and compile in half the time of all eight; what each op computes is
  tested in tests/spaces/darts and tests/test_kernels.py."""
  net = darts.Network(2, 3, 2, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                      primitives=FOUR_OPS, rngs=nnx.Rngs(0))
  schedule = bilevel.per_epoch_cosine(0.1, 0.001, 4, 2)
  w_tx, a_tx = bilevel.make_w_tx(schedule), bilevel.make_a_tx(lr=0.01)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  return graphdef, state, w_tx, a_tx, schedule


@pytest.fixture(scope="module")
def setup(parts):
  graphdef, state, w_tx, a_tx, schedule = parts
  arch_step, weight_step = bilevel.make_phase_steps(graphdef, w_tx, a_tx)
  search_step = bilevel.make_search_step(graphdef, w_tx, a_tx,
                                         execution=bilevel.Execution(jit=False))
  return state, jax.jit(arch_step), jax.jit(weight_step), jax.jit(search_step)


def test_weight_step_changes_no_alpha(setup):
  state, _, weight_step, _ = setup
  new, metrics = weight_step(state, _batch(np.random.default_rng(1)))
  chex.assert_trees_all_equal(new.alphas, state.alphas)
  chex.assert_trees_all_equal(new.a_opt_state, state.a_opt_state)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params),
                                                       jax.tree.leaves(state.params)))
  assert int(new.step) == 1 and np.isfinite(metrics["w_loss"])


def test_arch_step_changes_no_weight(setup):
  state, arch_step, _, _ = setup
  rng = np.random.default_rng(2)
  new, metrics = arch_step(state, _batch(rng), _batch(rng))
  chex.assert_trees_all_equal(new.params, state.params)
  chex.assert_trees_all_equal(new.w_opt_state, state.w_opt_state)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.alphas),
                                                       jax.tree.leaves(state.alphas)))
  assert float(metrics["a_grad_norm"]) > 0


def test_same_inputs_same_outputs(setup):
  state, _, _, step = setup
  rng = np.random.default_rng(3)
  batches = [(_batch(rng), _batch(rng)) for _ in range(3)]

  def run():
    s, history = state, []
    for bt, bv in batches:
      s, m = step(s, bt, bv)
      history.append(m)
    return s, history

  (s1, m1), (s2, m2) = run(), run()
  chex.assert_trees_all_equal(m1, m2)
  chex.assert_trees_all_equal(s1.alphas, s2.alphas)
  chex.assert_trees_all_equal(s1.params, s2.params)


def test_first_order_split_shares_one_gradient_program(parts, setup):
  # search.programs=split: both phases call one compiled gradient program (the arch
  # step reads its alpha gradient, the weight step its weight gradient); same step.
  graphdef, state, w_tx, a_tx, schedule = parts
  split, warmup = bilevel.make_search_steps(graphdef, w_tx, a_tx,
                                            execution=bilevel.Execution(programs="split"))
  rng = np.random.default_rng(4)
  bt, bv = _batch(rng), _batch(rng)
  want, m_want = setup[3](state, bt, bv)
  del cpu.COMPILE_LOG[:]
  got, m_got = split(jax.tree.map(jnp.copy, state), bt, bv)  # donated
  warmup(jax.tree.map(jnp.copy, state), bt, bv)  # the warm-up step compiles nothing new
  assert sorted(c["name"] for c in cpu.COMPILE_LOG) == ["arch_update", "grads",
                                                           "weight_update"]
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got.alphas, want.alphas, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m_got, m_want, rtol=1e-5, atol=1e-6)


def test_bfloat16_activations_float32_state(parts, setup):
  # Mixed precision: nothing promotes the activations back to float32 on the way
  # through the supernet (a bfloat16 network output proves it), while weights, alphas,
  # statistics and optimiser states stay float32 through a whole search step.
  graphdef, state, w_tx, a_tx, schedule = parts
  step32 = setup[3]
  rng = np.random.default_rng(5)
  bt, bv = _batch(rng), _batch(rng)
  # Every op of the space (traced, not compiled).
  full = darts.Network(2, 3, 2, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                       rngs=nnx.Rngs(0))
  assert len(full.primitives) == 8
  full_graphdef, full_state = bilevel.init_search_state(full, w_tx, a_tx, jax.random.key(0))
  params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), full_state.params)
  forward = lambda p, x: nnx.merge(full_graphdef, p, full_state.alphas, full_state.batch_stats,
                                   copy=True)(x)
  assert jax.eval_shape(forward, params16, bt["image"].astype(jnp.bfloat16)).dtype == jnp.bfloat16
  step16 = jax.jit(bilevel.make_search_step(
      graphdef, w_tx, a_tx, execution=bilevel.Execution(jit=False, dtype=jnp.bfloat16)))
  results = {jnp.float32: step32(state, bt, bv), jnp.bfloat16: step16(state, bt, bv)}
  (s32, m32), (s16, m16) = results[jnp.float32], results[jnp.bfloat16]
  for leaf in jax.tree.leaves((s16.params, s16.alphas, s16.batch_stats, s16.w_opt_state,
                               s16.a_opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  # Same step up to bfloat16 rounding (8 bits of mantissa).
  for k in ("w_loss", "a_loss"):
    np.testing.assert_allclose(m16[k], m32[k], rtol=0.05)
  d32 = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a, b: a - b, s32.params, state.params))[0]
  d16 = jax.flatten_util.ravel_pytree(jax.tree.map(lambda a, b: a - b, s16.params, state.params))[0]
  assert float(jnp.dot(d32, d16) / (jnp.linalg.norm(d32) * jnp.linalg.norm(d16))) > 0.95


def test_cosine_schedule_is_per_epoch_reference():
  s = bilevel.per_epoch_cosine(0.025, 0.001, 50, 10)
  np.testing.assert_allclose(s(0), 0.025)
  np.testing.assert_allclose(s(9), 0.025)  # constant within the epoch
  np.testing.assert_allclose(s(490), 0.001 + 0.024 * 0.5 * (1 + np.cos(np.pi * 49 / 50)),
                             rtol=1e-6)


def test_gumbel_temperature_anneals_per_epoch():
  linear = bilevel.per_epoch_anneal(10.0, 0.1, 5, 3)
  np.testing.assert_allclose([linear(s) for s in (0, 2, 3, 12, 99)],
                             [10.0, 10.0, 10.0 - 9.9 / 4, 0.1, 0.1], rtol=1e-5)  # GDAS
  geometric = bilevel.per_epoch_anneal(5.0, 5.0 * 0.956 ** 4, 5, 3, "exponential")
  np.testing.assert_allclose([geometric(3 * e) for e in range(5)],
                             [5.0 * 0.956 ** e for e in range(5)], rtol=1e-5)  # FBNet


def test_unknown_order():
  with pytest.raises(ValueError, match=r"unknown order 'third'; valid orders: first, second"):
    hypergrad.from_order("third")
  with pytest.raises(ValueError, match="needs the virtual step's optimiser"):
    bilevel.make_arch_grad_fn(None, hypergrad.Hypergradient("second"))


HYPERGRAD_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    import optax
    from dnas import bilevel, hypergrad, utils
    from dnas.spaces import darts
    assert jax.config.jax_enable_x64
    f64 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float64)
                                 if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    # Every kind of op (the 5x5 convs are the 3x3 code with another kernel size; they add
    # compile time, not cases).
    net = darts.Network(2, 3, 2, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                        primitives=("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                                    "sep_conv_3x3", "dil_conv_3x3"), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(int(__import__("sys").argv[1]))
    batch = lambda: dict(image=jnp.asarray(rng.standard_normal((4, 6, 6, 1))),
                         label=jnp.asarray(rng.integers(0, 3, 4), jnp.int32))
    w_tx, a_tx = bilevel.make_w_tx(0.1), bilevel.make_a_tx()
    graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
    state = f64(state)
    # One real weight step so that the momentum buffer in the virtual step is non-zero.
    _, weight_step = bilevel.make_phase_steps(graphdef, w_tx, a_tx)
    state, _ = jax.jit(weight_step)(state, batch())
    bt, bv = batch(), batch()
    # The virtual step: the weight optimiser's own update, without its clipping.
    virtual_tx = bilevel.make_w_tx(0.1, grad_clip=None)
    exact, exact_stats, _ = jax.jit(bilevel.make_arch_grad_fn(
        graphdef, hypergrad.unrolled(virtual_tx)))(state, bt, bv)
    # Eq. 8 with a small difference step: at the reference's r=0.01 the perturbation
    # crosses ReLU/max-pool kinks of this 2-channel net (BUILD_NOTES.md).
    fd = jax.jit(bilevel.make_arch_grad_fn(
        graphdef, hypergrad.unrolled(virtual_tx, hvp="fd", fd_r=1e-5)))(state, bt, bv)[0]
    first = jax.jit(bilevel.make_arch_grad_fn(graphdef, hypergrad.first_order()))(state, bt, bv)[0]
    # The unrolled validation loss f(alpha) = L_val(w - eta (mu buf + grad L_train + wd w),
    # alpha), written out by hand (DARTS Eq. 6 with the reference's momentum SGD).
    loss_fn = bilevel.make_loss_fn(graphdef)
    trace = optax.tree_utils.tree_get(state.w_opt_state, "trace")
    @jax.jit
    def f(alphas):
      g = jax.grad(lambda w: loss_fn(w, alphas, state.batch_stats, bt, {})[0])(state.params)
      w2 = jax.tree.map(lambda w, gw, m: w - 0.1 * (0.9 * m + gw + 3e-4 * w), state.params, g, trace)
      return loss_fn(w2, alphas, state.batch_stats, bv, {})[0]
    flat, unravel = jax.flatten_util.ravel_pytree(state.alphas)
    eps = 1e-6
    central = np.array([(f(unravel(flat + eps * e)) - f(unravel(flat - eps * e))) / (2 * eps)
                        for e in np.eye(flat.size)])
    ravel = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0])
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    # Reverse mode through the whole virtual step: the same derivative by another route.
    reverse = ravel(jax.jit(jax.grad(f))(state.alphas))
    # A search step run as separate programs (the default for the second-order methods),
    # with per-cell rematerialisation in the HVP, equals the step composed here from the
    # one-program hypergradient above, the Adam update and the weight step.
    updates, a_opt_state = a_tx.update(exact, state.a_opt_state, state.alphas)
    expected = state._replace(alphas=jax.tree.map(jnp.add, state.alphas, updates),
                              batch_stats=exact_stats, a_opt_state=a_opt_state)
    expected, _ = jax.jit(weight_step)(expected, bt)
    split = bilevel.make_search_step(
        graphdef, w_tx, a_tx, hypergrad=hypergrad.unrolled(virtual_tx, remat=True),
        execution=bilevel.Execution(programs="split"))
    got, _ = split(jax.tree.map(jnp.copy, state), bt, bv)  # donated
    split_vs_whole = max(rel(np.ravel(a), np.ravel(b)) if np.any(b) else float(np.max(np.abs(a)))
                         for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected))
                         if jnp.issubdtype(a.dtype, jnp.floating))
    print(json.dumps(dict(exact_vs_central=rel(ravel(exact), central),
                          split_vs_whole=split_vs_whole,
                          exact_vs_reverse=rel(ravel(exact), reverse),
                          fd_vs_exact=rel(ravel(fd), ravel(exact)),
                          first_vs_exact=rel(ravel(first), ravel(exact)),
                          dtype=str(ravel(exact).dtype))))
""")


def test_second_order_hypergradient_is_exact():
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  seed = '0'
  out = subprocess.run([sys.executable, "-c", "import jax.flatten_util\n" + HYPERGRAD_SCRIPT,
                        seed], env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["dtype"] == "float64"
  # Exact autodiff through the virtual step vs a float64 central difference of f.
  assert r["exact_vs_central"] < 1e-4, r
  # Forward-over-reverse Hessian-vector product vs reverse-over-reverse: rounding only.
  assert r["exact_vs_reverse"] < 1e-10, r
  assert r["split_vs_whole"] < 1e-10, r
  # DARTS Eq. 8 approximates the same quantity; first order is a different one.
  assert r["fd_vs_exact"] < 1e-5, r
  assert r["first_vs_exact"] > 10 * r["fd_vs_exact"], r


def _precisions(jaxpr):
  """(primitive name, precision) of every dot_general and convolution in a jaxpr,
  sub-jaxprs included."""
  out = []
  for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      out.append((eqn.primitive.name, eqn.params.get("precision")))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _precisions(sub)
  return out


def test_second_fd_perturbed_passes_use_full_float32_matmuls(parts):
  # Eq. 8's finite difference needs float32 products on every backend: GPUs and TPUs
  # default to TF32 / bfloat16 passes, whose rounding swallows the perturbation.
  graphdef, state, *_ = parts
  jaxprs = {}

  def recording_piece(fn, state_update=False):
    del state_update
    def call(*args):
      jaxprs.setdefault(fn.__name__, jax.make_jaxpr(fn)(*args))
      return fn(*args)
    return call

  rng = np.random.default_rng(6)
  arch_grad = bilevel.make_arch_grad_fn(
      graphdef, hypergrad.unrolled(bilevel.make_w_tx(0.1, grad_clip=None), hvp="fd"),
      piece=recording_piece)
  jax.make_jaxpr(arch_grad)(state, _batch(rng), _batch(rng))  # traced, not run
  highest = jax.lax.Precision.HIGHEST
  fd = _precisions(jaxprs["fd_alpha_grad"])
  assert fd and all(p == (highest, highest) for _, p in fd), fd
  # The ordinary gradient passes keep the backend's default (on GPU: TF32, fast).
  assert any(p is None for _, p in _precisions(jaxprs["grads"]))


def test_virtual_step_is_the_weight_optimisers_own_update():
  # DARTS Eq. 6 with the reference's momentum SGD, and the transpose of its update in g.
  rng = np.random.default_rng(7)
  tree = lambda: {"a": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
                  "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
  w, g, v = tree(), tree(), tree()
  lr, mu, wd = 0.1, 0.9, 3e-4
  clipped = bilevel.make_w_tx(lr, mu, wd, grad_clip=0.01)
  virtual_tx = bilevel.make_w_tx(lr, mu, wd, grad_clip=None)
  opt_state = clipped.init(w)
  _, opt_state = clipped.update(tree(), opt_state, w)  # a non-zero momentum buffer
  buf = optax.tree_utils.tree_get(opt_state, "trace")
  got = hypergrad.virtual_step(virtual_tx, w, g, opt_state)  # no clipping, same state
  want = jax.tree.map(lambda w, g, m: w - lr * (mu * m + g + wd * w), w, g, buf)
  chex.assert_trees_all_close(got, want, rtol=1e-6)
  chex.assert_trees_all_close(hypergrad.update_transpose(virtual_tx, w, g, opt_state, v),
                              jax.tree.map(lambda x: -lr * x, v), rtol=1e-6)
  # Any differentiable update: Adam's transpose is its Jacobian's, applied to v.
  adam = optax.adam(0.01)
  s = adam.update(tree(), adam.init(w), w)[1]
  flat_g, unravel = jax.flatten_util.ravel_pytree(g)
  jac = jax.jacobian(lambda fg: jax.flatten_util.ravel_pytree(
      adam.update(unravel(fg), s, w)[0])[0])(flat_g)
  got = jax.flatten_util.ravel_pytree(hypergrad.update_transpose(adam, w, g, s, v))[0]
  np.testing.assert_allclose(got, jac.T @ jax.flatten_util.ravel_pytree(v)[0], rtol=1e-5,
                             atol=1e-8)


def test_arch_loss_adds_terms_and_objective(parts):
  # The architecture loss as a composition: objective(ce) plus terms on alpha; its
  # gradient adds the terms' (here 2 c alpha) to the task loss's.
  graphdef, state, *_ = parts
  rng = np.random.default_rng(8)
  bt, bv = _batch(rng), _batch(rng)
  c = 0.3
  term = lambda alphas, step: (c * optax.tree.norm(alphas, squared=True), {"a_l2": step})
  plain = jax.jit(bilevel.make_arch_grad_fn(graphdef, hypergrad.first_order()))
  with_term = jax.jit(bilevel.make_arch_grad_fn(
      graphdef, hypergrad.first_order(),
      arch_loss=bilevel.arch_loss(lambda ce, a: (2.0 * ce, {}), term)))
  (d0, _, m0), (d1, _, m1) = plain(state, bt, bv), with_term(state, bt, bv)
  chex.assert_trees_all_close(d1, jax.tree.map(lambda d, a: 2.0 * d + 2 * c * a, d0,
                                               state.alphas), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m1["a_objective"], 2.0 * m0["a_loss"] + c * optax.tree.norm(
      state.alphas, squared=True), rtol=1e-5)
  assert int(m1["a_l2"]) == int(state.step)


def test_weight_step_sees_the_perturbed_alphas(parts, setup):
  # SDARTS's hook: the weight step's forward pass uses perturb(alphas); the state keeps its
  # alphas. The perturbation here is one signed-gradient step of the weight loss in
  # alpha (adversarial, as SDARTS-ADV's inner step), so alpha_grad is exercised too.
  graphdef, state, w_tx, a_tx, _ = parts
  rng = np.random.default_rng(9)
  bt = _batch(rng)
  grads = bilevel.make_grads_fn(graphdef)
  eps = 0.5

  def perturb(alphas, key, step, alpha_grad):
    del key, step
    return jax.tree.map(lambda a, g: a + eps * jnp.sign(g), alphas, alpha_grad(alphas)[1])
  _, weight_step = bilevel.make_phase_steps(graphdef, w_tx, a_tx, perturb=perturb)
  got, m_got = jax.jit(weight_step)(state, bt)
  d_alpha = jax.jit(grads)(state.params, state.alphas, state.batch_stats, bt, {})[4]
  shifted = jax.tree.map(lambda a, g: a + eps * jnp.sign(g), state.alphas, d_alpha)
  want, m_want = setup[2](state._replace(alphas=shifted), bt)  # the plain weight step
  chex.assert_trees_all_equal(got.alphas, state.alphas)
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m_got["w_loss"], m_want["w_loss"], rtol=1e-6)


def test_execution_splits_second_order_on_cpu_only():
  ex = bilevel.Execution()
  assert jax.default_backend() == "cpu"
  assert (ex.split("first"), ex.split("second"), ex.split("second_fd")) == (False, True, True)
  assert not bilevel.Execution(programs="one").split("second")
  assert bilevel.Execution(programs="split").split("first")
  assert not bilevel.Execution(jit=False, programs="split").split("second")
  with pytest.raises(ValueError, match="programs 'many' is unknown"):
    bilevel.Execution(programs="many").split("first")


def test_flat_stacked_state_steps_as_the_tree(parts, setup):
  # execution.Flat(stack=True) (the default off the CPU) carries equal-shaped leaves as one
  # buffer each; the step computes what it computes on the tree (to rounding: XLA fuses
  # the two programs differently), the buffers round-trip to the same tree, and their
  # shardings follow the leaves' (one stacked axis).
  graphdef, state, w_tx, a_tx, _ = parts
  step = bilevel.make_search_step(graphdef, w_tx, a_tx, execution=bilevel.Execution(jit=False))
  mesh = parallel.make_mesh(1, 1)
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  flat = execution.Flat(state, shardings[0], stack=True)
  n = len(jax.tree.leaves(state))
  assert flat.stacked and len(flat) < n // 3
  assert len(execution.Flat(state, shardings[0], stack=False)) == n
  chex.assert_trees_all_equal(flat.tree(flat.leaves(state)), state)
  rng = np.random.default_rng(0)
  fn = flat.jit(step, **bilevel.jit_shardings(shardings, 2))
  buffers, want = flat.leaves(jax.tree.map(jnp.copy, state)), state
  for _ in range(2):
    bt, bv = _batch(rng), _batch(rng)
    buffers, metrics = fn(buffers, bt, bv)
    want, want_metrics = setup[3](want, bt, bv)  # the tree step (compiled for other tests)
  assert len(buffers) == len(flat)
  got = flat.tree(buffers)
  chex.assert_trees_all_close(got._replace(rng=None), want._replace(rng=None), rtol=1e-5,
                              atol=1e-7)
  np.testing.assert_array_equal(jax.random.key_data(got.rng), jax.random.key_data(want.rng))
  chex.assert_trees_all_close(metrics, want_metrics, rtol=1e-5, atol=1e-7)
  assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, got)) == jax.tree.leaves(
      shardings[0])
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  assert parallel.stacked_sharding(sharded).spec == jax.sharding.PartitionSpec(None, "fsdp")


def test_nesterov_sgd_is_pytorchs():
  # torch.optim.SGD(nesterov=True, dampening=0): g' = g + wd w; buf = mu buf + g';
  # w -= lr (g' + mu buf). Two steps (the first starts the buffer at g').
  rng = np.random.default_rng(10)
  w = jnp.asarray(rng.standard_normal(5), jnp.float32)
  grads = [jnp.asarray(rng.standard_normal(5), jnp.float32) for _ in range(2)]
  lr, mu, wd = 0.1, 0.9, 5e-4
  tx = bilevel.make_w_tx(lr, mu, wd, grad_clip=None, nesterov=True)
  state, got = tx.init(w), w
  want, buf = np.asarray(w, np.float64), np.zeros(5)
  for g in grads:
    updates, state = tx.update(g, state, got)
    got = optax.apply_updates(got, updates)
    g2 = np.asarray(g, np.float64) + wd * want
    buf = mu * buf + g2
    want = want - lr * (g2 + mu * buf)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weight_decay_in_state_steps_as_the_constant_and_changes_without_a_new_program():
  # DARTS-ADA's decay as optimiser state: the same updates as the constant, and a new
  # value set in the state steps like an optimiser built with it, in one compiled program.
  rng = np.random.default_rng(11)
  w = jnp.asarray(rng.standard_normal(5), jnp.float32)
  grads = [jnp.asarray(rng.standard_normal(5), jnp.float32) for _ in range(3)]
  traced = bilevel.make_w_tx(0.1, 0.9, 5e-4, grad_clip=1.0, weight_decay_in_state=True)
  traces = []

  @jax.jit
  def step(state, w, g):
    traces.append(1)
    u, state = traced.update(g, state, w)
    return state, optax.apply_updates(w, u)
  for wd in (5e-4, 15e-4):
    const = bilevel.make_w_tx(0.1, 0.9, wd, grad_clip=1.0)
    s_const, w_const = const.init(w), w
    s_traced, w_traced = optim.set_weight_decay(traced.init(w), wd), w
    for g in grads:
      u, s_const = const.update(g, s_const, w_const)
      w_const = optax.apply_updates(w_const, u)
      s_traced, w_traced = step(s_traced, w_traced, g)
    # One compiled program against op-by-op dispatch: float32 rounding, relative to the
    # weights' scale (~1) where an update cancels a weight to near 0; a wrong decay would
    # move them by lr * 1e-3 * |w| ~ 1e-4 a step.
    np.testing.assert_allclose(w_traced, w_const, rtol=1e-6, atol=1e-6)
  assert len(traces) == 1
  with pytest.raises(ValueError, match="keeps no weight decay"):
    optim.set_weight_decay(bilevel.make_w_tx(0.1).init(w), 1e-3)


def test_weight_first_step_is_the_weight_step_then_the_arch_step(parts, setup):
  # NAS-Bench-201's DARTS-V1 and GDAS order: the architecture step sees updated weights.
  graphdef, state, w_tx, a_tx, _ = parts
  _, arch_step, weight_step, _ = setup
  step, _ = bilevel.make_search_steps(graphdef, w_tx, a_tx, weight_first=True,
                                      execution=bilevel.Execution(jit=False))
  rng = np.random.default_rng(12)
  bt, bv = _batch(rng), _batch(rng)
  mid, m_weight = weight_step(state, bt)
  want, m_arch = arch_step(mid, bt, bv)
  got, metrics = jax.jit(step)(state, bt, bv)
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(got.alphas, want.alphas, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(metrics, {**m_arch, **m_weight}, rtol=1e-6, atol=1e-7)
  # ... which differs from DARTS's order (the architecture loss at the old weights; Adam's
  # first update is the gradient's sign, so the alphas may agree after one step).
  _, m_other = setup[3](state, bt, bv)
  assert float(m_other["a_grad_norm"]) != pytest.approx(float(metrics["a_grad_norm"]))
