"""Bilevel optimisation of a supernet (DARTS Sec. 2.3): pure, jittable steps built from
composable parts, with how they run kept apart.

Weights w (`nnx.Param`) minimise the task loss on the weight split; architecture logits
alpha (`ArchParam`) minimise the architecture loss on the architecture split. One search
step is, as in the reference `train_search.py`, an architecture step followed by a weight
step on the same pair of batches.

  graphdef, state = init_search_state(net, w_tx, a_tx, key)
  hg = hypergrad.unrolled(make_w_tx(schedule, grad_clip=None))    # what alpha's gradient is
  step = make_search_step(graphdef, w_tx, a_tx, hypergrad=hg,
                          arch_loss=arch_loss(latency_objective),  # + regularising terms
                          relaxation=relaxation.gumbel(tau),       # op weights per pass
                          execution=Execution(dtype=jnp.bfloat16))  # how it runs
  state, metrics = step(state, batch_train, batch_val)

Parts: the hypergradient (`dnas.hypergrad`: first order, the exact unrolled second order,
DARTS's finite difference); the task loss `task_loss(model, batch, inputs) -> (loss,
logits)` (cross entropy by default); the architecture loss `arch_loss(ce, alphas, step)
-> (loss, metrics)` composed of an objective on the task loss and additive terms on the
architecture (`arch_loss(...)`); the relaxation (`dnas.relaxation`), which draws any
randomness from the state's key, the step and the phase; `perturb`, which hands the
weight step perturbed architecture weights (SDARTS). Batches are dicts {"image": f32[N,
H, W, C], "label": int32[N]}.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dnas import autodiff, hypergrad as hypergrad_lib, relaxation as relaxation_lib, utils
from dnas.arch import ArchParam
from dnas import execution as execution_lib
from dnas.execution import Execution, jit_shardings, split_piece
from dnas.hypergrad import ORDERS
# Names that lived here before the optimisers, the execution and the eval step had their
# own modules (scripts and notebooks import them from here).
from dnas.evaluation import make_eval_step  # noqa: F401
from dnas.execution import PROGRAMS  # noqa: F401
from dnas.optim import make_a_tx, make_w_tx, per_epoch_anneal, per_epoch_cosine  # noqa: F401


class SearchState(NamedTuple):
  """Everything a search step reads and writes (a pytree)."""
  params: nnx.State        # network weights, nnx.Param
  alphas: nnx.State        # architecture logits, ArchParam
  batch_stats: nnx.State   # the rest of the model's state (MODEL_STATE): BatchNorm
                           # running statistics, RNG counters of a user's model
  w_opt_state: optax.OptState
  a_opt_state: optax.OptState
  step: jax.Array          # int32[], search steps taken
  rng: jax.Array           # PRNG key for stochastic relaxations; DARTS steps draw nothing


# A model's state besides weights and alphas, carried through the steps: BatchNorm
# statistics (the DARTS supernet has nothing else), RNG counters (dropout, or the RNG
# that `nnx.bridge.ToNNX` keeps for a wrapped Linen module).
# Sown intermediates (`nnx.Intermediate`) are outputs of one call, not carried state.
MODEL_STATE = nnx.Not(nnx.Any(nnx.Param, ArchParam, nnx.Intermediate))

def split_supernet(net: nnx.Module):
  """(graphdef, params, alphas, batch_stats) of a model in train mode; batch_stats holds
  all of its state that is neither a weight nor an alpha (`MODEL_STATE`). Sown
  intermediates are removed from `net` first."""
  nnx.pop(net, nnx.Intermediate)  # what a previous call sowed is not part of the model
  graphdef, params, alphas, stats = nnx.split(net, nnx.Param, ArchParam, MODEL_STATE)
  return graphdef, params, alphas, stats


def init_search_state(net: nnx.Module, w_tx: optax.GradientTransformation,
                      a_tx: optax.GradientTransformation, key: jax.Array):
  """Splits `net` (put in train mode) once into a graphdef and a SearchState."""
  net.train()
  graphdef, params, alphas, stats = split_supernet(net)
  if not jax.tree.leaves(alphas):
    raise ValueError("the model has no ArchParam variables to search over")
  state = SearchState(params, alphas, stats, w_tx.init(params), a_tx.init(alphas),
                      jnp.zeros((), jnp.int32), key)
  return graphdef, state


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross entropy, f32[N, K], int[N] -> f32[]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def cross_entropy_loss(model, batch: dict, inputs: dict) -> tuple[jax.Array, jax.Array]:
  """The default task loss: (cross entropy f32[], logits f32[N, K]) of `model` on
  `batch`, called with the relaxation's keyword `inputs`; logits at least float32."""
  out = model(batch["image"], **inputs)
  logits = utils.at_least_float32(out[0] if isinstance(out, tuple) else out)
  return cross_entropy(logits, batch["label"]), logits


def arch_loss(objective: Callable | None = None, *terms: Callable) -> Callable:
  """The architecture loss (ce, alphas, step) -> (loss, metrics): `objective(ce, alphas)
  -> (loss, metrics)` of the task loss ce (e.g. `latency.arch_objective`; default:
  ce), plus each additive term `term(alphas, step) -> (f32[], metrics)` (regularisers
  on the architecture)."""
  def loss_fn(ce, alphas, step):
    loss, metrics = objective(ce, alphas) if objective is not None else (ce, {})
    for term in terms:
      value, extra = term(alphas, step)
      loss, metrics = loss + value, {**metrics, **extra}
    return loss, metrics
  return loss_fn


def make_loss_fn(graphdef, dtype=None, task_loss: Callable | None = None) -> Callable:
  """loss(params, alphas, stats, batch, inputs) -> (loss, (logits, new_stats)), pure.

  `task_loss(model, batch, inputs) -> (loss, logits)` (default `cross_entropy_loss`);
  `inputs` are the relaxation's keyword inputs of the model. `dtype` is the activations'
  dtype (None: the weights' own): the weights and images are cast to it where they are
  used (so their gradients keep the weights' dtype), the alphas and statistics are not
  cast, and the loss comes from float32 (or wider) logits.
  """
  task_loss = task_loss or cross_entropy_loss

  def loss_fn(params, alphas, stats, batch, inputs):
    net = nnx.merge(graphdef, utils.cast_floating(params, dtype), alphas, stats, copy=True)
    batch = {**batch, "image": utils.cast_floating(batch["image"], dtype)}
    loss, logits = task_loss(net, batch, inputs)
    return loss, (logits, nnx.state(net, MODEL_STATE))
  return loss_fn


def _identity_piece(fn, state_update=False):
  del state_update
  return fn


def make_grads_fn(graphdef, dtype=None, task_loss: Callable | None = None) -> Callable:
  """grads(params, alphas, stats, batch, inputs) -> (loss, logits, new_stats, d_params,
  d_alphas).

  The one gradient program of a search: every phase reads some of its outputs (jit
  drops the rest when it is traced inside a bigger function)."""
  loss_fn = make_loss_fn(graphdef, dtype, task_loss)

  def grads(params, alphas, stats, batch, inputs):
    (loss, (logits, new_stats)), (d_params, d_alphas) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, alphas, stats, batch, inputs)
    return loss, logits, new_stats, d_params, d_alphas
  return grads


def make_arch_grad_fn(graphdef, hypergrad: hypergrad_lib.Hypergradient, *,
                      arch_loss: Callable | None = None, dtype=None,
                      task_loss: Callable | None = None, piece: Callable = _identity_piece,
                      grads: Callable | None = None) -> Callable:
  """Returns arch_grad(state, batch_train, batch_val, inputs=None) -> (d_alpha, new_stats,
  metrics), the gradient of the architecture loss that `hypergrad` defines.

  `arch_loss(ce, alphas, step) -> (loss, metrics)` (`arch_loss(...)`), if given, is what
  the architecture step minimises instead of the validation task loss ce = L_val (e.g.
  FBNet's latency-aware loss). Its gradient is exact for every order: d obj/d alpha =
  (d obj/d ce) (dL_val/d alpha, as the order computes it) + d obj/d alpha directly.

  `new_stats` are the running statistics after the forward passes at the current
  weights that the order evaluates (the val batch for `first`, the train batch of the
  virtual step otherwise); the virtual and perturbed models do not update them.

  `piece(fn, state_update=False)` wraps each sub-computation of the second-order methods
  (the gradient program, the virtual step, the Hessian-vector product); the default
  leaves them to the caller's jit, and a split step compiles each one alone. `grads`:
  the (wrapped) `make_grads_fn` program to call, so that callers can share one.
  """
  order = hypergrad.order
  if order not in ORDERS:
    raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
  if order != "first" and hypergrad.virtual_tx is None:
    raise ValueError(f"order {order!r} needs the virtual step's optimiser (hypergrad.unrolled)")
  loss_fn = make_loss_fn(graphdef, dtype, task_loss)
  full_loss_fn = make_loss_fn(graphdef, None, task_loss)
  grads = grads or piece(make_grads_fn(graphdef, dtype, task_loss))
  tx, fd_r = hypergrad.virtual_tx, hypergrad.fd_r

  def first(state, batch_train, batch_val, inputs):
    # The shared gradient program: inside one jit XLA drops the unused weight gradient;
    # split, the architecture and weight steps run one compiled program (the reference's
    # `loss.backward()` computes the weight gradient here too).
    del batch_train
    loss, logits, stats, _, d_alpha = grads(state.params, state.alphas, state.batch_stats,
                                            batch_val, inputs)
    return d_alpha, stats, dict(a_loss=loss, a_acc=accuracy(logits, batch_val["label"]))

  def train_alpha_grad(loss, params, alphas, stats, batch_train, inputs):
    return jax.grad(loss, argnums=1, has_aux=True)(params, alphas, stats, batch_train,
                                                    inputs)[0]

  def exact_hvp(params, alphas, stats, batch_train, inputs, u):
    # grad^2_{alpha,w} L_train(w, alpha) u exactly: forward mode (a jvp along u in w) over
    # the reverse-mode alpha-gradient; memory of about one gradient with tangents.
    with autodiff.forward_mode_autodiff(), autodiff.rematerialize(hypergrad.remat):
      return jax.jvp(lambda w: train_alpha_grad(loss_fn, w, alphas, stats, batch_train,
                                                inputs), (params,), (u,))[1]

  def fd_alpha_grad(params, alphas, stats, batch_train, inputs):
    # Full float32 matmuls and convolutions: GPUs and TPUs default to TF32 / bfloat16
    # passes, whose rounding (~1e-3 relative) would swallow Eq. 8's perturbation (~1e-4
    # relative to a weight), so that w+ and w- gave the same products.
    with jax.default_matmul_precision("float32"):
      return train_alpha_grad(full_loss_fn, params, alphas, stats, batch_train, inputs)
  alpha_grad = piece(fd_alpha_grad)

  def perturb(params, u, sign):
    # w +- R u, R = fd_r / ||u||, with the norm inside the program (no host round trip).
    scale = sign * fd_r / optax.tree.norm(u)
    return jax.tree.map(lambda w, d: w + scale.astype(w.dtype) * d, params, u)
  perturb = piece(perturb)

  def fd_quotient(g_pos, g_neg, u):
    two_r = 2 * fd_r / optax.tree.norm(u)
    return jax.tree.map(lambda p, n: (p - n) / two_r.astype(p.dtype), g_pos, g_neg)
  fd_quotient = piece(fd_quotient)

  def fd_hvp(params, alphas, stats, batch_train, inputs, u):
    # DARTS Eq. 8: (grad_a L_train(w+) - grad_a L_train(w-)) / 2R, w+- = w +- R u,
    # R = 0.01 / ||u||. In the weights' own dtype: a perturbation of norm 0.01 is far
    # below bfloat16's resolution of the weights, and w+ and w- would round together.
    g_pos = alpha_grad(perturb(params, u, 1.0), alphas, stats, batch_train, inputs)
    g_neg = alpha_grad(perturb(params, u, -1.0), alphas, stats, batch_train, inputs)
    return fd_quotient(g_pos, g_neg, u)

  def virtual(params, d_params, w_opt_state):
    # Eq. 6 with the weight optimiser's own update: w' = w + u(g).
    return hypergrad_lib.virtual_step(tx, params, d_params, w_opt_state)
  virtual = piece(virtual)

  def transpose(params, d_params, w_opt_state, v):
    # (du/dg)^T v; -eta v for the reference's momentum SGD.
    return hypergrad_lib.update_transpose(tx, params, d_params, w_opt_state, v)
  transpose = piece(transpose)

  def unrolled(hvp_fn):
    def arch_grad(state, batch_train, batch_val, inputs):
      # DARTS Eq. 7: dL_val(w'(alpha), alpha)/d alpha
      #   = grad_a L_val(w', alpha) + grad^2_{alpha,w} L_train(w, alpha) (du/dg)^T v,
      # v = grad_w' L_val(w', alpha) (dnas.hypergrad).
      _, _, stats, d_params, _ = grads(state.params, state.alphas, state.batch_stats,
                                       batch_train, inputs)
      w_virtual = virtual(state.params, d_params, state.w_opt_state)
      loss, logits, _, v, d_alpha = grads(w_virtual, state.alphas, stats, batch_val, inputs)
      u = transpose(state.params, d_params, state.w_opt_state, v)
      hvp = hvp_fn(state.params, state.alphas, state.batch_stats, batch_train, inputs, u)
      d_alpha = jax.tree.map(jnp.add, d_alpha, hvp)
      return d_alpha, stats, dict(a_loss=loss, a_acc=accuracy(logits, batch_val["label"]))
    return arch_grad

  arch_grad = dict(first=first, second=unrolled(piece(exact_hvp)),
                   second_fd=unrolled(fd_hvp))[order]

  def with_loss(d_alpha, ce, alphas, step):
    loss, vjp, metrics = jax.vjp(lambda c, a: arch_loss(c, a, step), ce, alphas,
                                 has_aux=True)
    d_ce, d_direct = vjp(jnp.ones_like(loss))
    return jax.tree.map(lambda d, g: d_ce * d + g, d_alpha, d_direct), loss, metrics
  with_loss = piece(with_loss)

  def arch_grad_fn(state, batch_train, batch_val, inputs=None):
    d_alpha, stats, metrics = arch_grad(state, batch_train, batch_val, inputs or {})
    if arch_loss is None:
      return d_alpha, stats, metrics
    d_alpha, loss, extra = with_loss(d_alpha, metrics["a_loss"], state.alphas, state.step)
    return d_alpha, stats, {**metrics, **extra, "a_objective": loss}
  return arch_grad_fn


def make_phase_steps(graphdef, w_tx: optax.GradientTransformation,
                     a_tx: optax.GradientTransformation, *,
                     hypergrad: hypergrad_lib.Hypergradient = hypergrad_lib.first_order(),
                     arch_loss: Callable | None = None,
                     relaxation: relaxation_lib.Relaxation = relaxation_lib.softmax(),
                     perturb: Callable | None = None, task_loss: Callable | None = None,
                     extra_inputs: Callable | None = None, dtype=None,
                     piece: Callable = _identity_piece):
  """The two phases as pure functions (not jitted).

  `hypergrad`, `arch_loss`, `task_loss`: `make_arch_grad_fn`. `relaxation`: each phase
  asks it for the model's keyword inputs with a key from state.rng, the step and the
  phase (0: architecture, 1: weights). `perturb(alphas, key, step, alpha_grad) ->
  alphas`, if given, is what the weight step's forward pass uses instead of the alphas
  (SDARTS's random or adversarial perturbation, `dnas.methods.sdarts`; `alpha_grad(alphas)
  -> (loss, d_alpha)` is the weight step's loss on its batch and its gradient in alpha,
  for adversarial ones; key from phase 2). `extra_inputs(step) -> dict`: more keyword
  inputs of every forward pass of both phases (DARTS-'s `aux_skip` weight). `dtype`:
  `make_loss_fn`. `piece`: `make_arch_grad_fn` (it also wraps the weight step's
  gradient and, with `state_update=True`, each phase's update (state, ...) -> (state,
  f32[])).

  Returns:
    arch_step(state, batch_train, batch_val) -> (state, metrics): updates alphas only.
    weight_step(state, batch_train) -> (state, metrics): updates weights only.
  """
  # One gradient program for the virtual step, the validation gradient and the weight step.
  raw_grads = make_grads_fn(graphdef, dtype, task_loss)
  grads = piece(raw_grads)
  arch_grad = make_arch_grad_fn(graphdef, hypergrad, arch_loss=arch_loss, dtype=dtype,
                                task_loss=task_loss, piece=piece, grads=grads)

  def arch_update(state, d_alpha, stats):
    updates, a_opt_state = a_tx.update(d_alpha, state.a_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)
    return (state._replace(alphas=alphas, batch_stats=stats, a_opt_state=a_opt_state),
            optax.tree.norm(d_alpha))
  arch_update = piece(arch_update, state_update=True)

  def phase_key(state, phase):
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), phase)

  def inputs_of(state, phase):
    inputs = (relaxation.model_inputs(phase_key(state, phase), state.step, phase)
              if relaxation.stochastic else {})
    return {**inputs, **extra_inputs(state.step)} if extra_inputs else inputs

  started = []

  def compile_updates_ahead(state):
    # First order, split: the update programs (weight optimiser: ~30 s for the CIFAR
    # supernet) compile in a background thread while the caller compiles the gradient
    # program: ~12 s less to wait for ~0.6 GiB more resident (BUILD_NOTES.md, "Compile
    # time"). Not for the second-order methods, whose memory is the constraint. Traced
    # inside a jit: nothing to do.
    if started or hypergrad.order != "first" or not hasattr(weight_update, "precompile"):
      return
    started.append(True)
    spec = execution_lib.specs(state)
    execution_lib.precompile_in_background(
        [(weight_update, (spec, spec.params, spec.batch_stats)),
         (arch_update, (spec, spec.alphas, spec.batch_stats))], name="dnas-compile-updates")

  def arch_step(state, batch_train, batch_val):
    compile_updates_ahead(state)
    # One architecture sample for every forward pass of the step.
    d_alpha, stats, metrics = arch_grad(state, batch_train, batch_val, inputs_of(state, 0))
    state, metrics["a_grad_norm"] = arch_update(state, d_alpha, stats)
    return state, metrics

  def weight_update(state, g, stats):
    updates, w_opt_state = w_tx.update(g, state.w_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return (state._replace(params=params, batch_stats=stats, w_opt_state=w_opt_state,
                           step=state.step + 1), optax.tree.norm(g))
  weight_update = piece(weight_update, state_update=True)

  def perturbed(state, batch_train, inputs):
    def loss_and_alpha_grad(a):
      loss, _, _, _, d_alpha = raw_grads(state.params, a, state.batch_stats, batch_train,
                                         inputs)
      return loss, d_alpha
    return perturb(state.alphas, phase_key(state, 2), state.step, loss_and_alpha_grad)
  perturbed = piece(perturbed)

  def weight_step(state, batch_train, inputs=None):
    """`inputs`: the supernet's keyword inputs instead of the relaxation's (DARTS-PT's
    fine-tuning with projected op weights)."""
    compile_updates_ahead(state)
    inputs = inputs_of(state, 1) if inputs is None else inputs
    alphas = state.alphas if perturb is None else perturbed(state, batch_train, inputs)
    loss, logits, stats, g, _ = grads(state.params, alphas, state.batch_stats, batch_train,
                                      inputs)
    state, g_norm = weight_update(state, g, stats)
    metrics = dict(w_loss=loss, w_acc=accuracy(logits, batch_train["label"]),
                   w_grad_norm=g_norm)
    return state, metrics

  return arch_step, weight_step


def make_search_steps(graphdef, w_tx: optax.GradientTransformation,
                      a_tx: optax.GradientTransformation, *,
                      hypergrad: hypergrad_lib.Hypergradient = hypergrad_lib.first_order(),
                      arch_loss: Callable | None = None,
                      relaxation: relaxation_lib.Relaxation = relaxation_lib.softmax(),
                      perturb: Callable | None = None, task_loss: Callable | None = None,
                      extra_inputs: Callable | None = None,
                      execution: Execution = Execution(), weight_first: bool = False):
  """The search step (architecture step, then weight step: DARTS's `train_search`; with
  `weight_first`, the weight step and then the architecture step at the updated weights:
  NAS-Bench-201's DARTS-V1 and GDAS scripts) and its warm-up step (the
  weight step alone, for epochs before the first architecture step, such as PC-DARTS's
  first 15). What they compute: `make_phase_steps`; how they run: `execution`.

  `Execution(jit=False)` returns the pure steps. Jitted, each is one program, unless
  `execution.split(order)`: then the step runs as a handful of jitted programs, each
  compiled ahead of its first call with the compiler's freed memory given back
  (`cpu.compile_then_trim`): the gradient program (w and alpha gradients of one batch;
  compiled once and called by every phase), the two updates, and for the second-order
  methods the virtual step and the Hessian-vector product. Split steps share their
  programs. On XLA:CPU one program of a whole second-order step compiles for 10+ minutes
  and holds the buffers of its three gradient passes at once; for `first`, split cuts
  the compile time by about 40 % (one gradient program instead of two) for slower
  architecture steps, which then also compute the weight gradient (BUILD_NOTES.md).

  Returns:
    (step, warmup_step), each f(state, batch_train, batch_val) -> (state, metrics),
    `state` donated; metrics is a flat dict of f32[] scalars.
  """
  split = execution.split(hypergrad.order)
  kwargs = dict(hypergrad=hypergrad, arch_loss=arch_loss, relaxation=relaxation,
                perturb=perturb, task_loss=task_loss, extra_inputs=extra_inputs,
                dtype=execution.dtype)
  if split:
    arch_step, weight_step = make_phase_steps(graphdef, w_tx, a_tx,
                                              piece=split_piece(execution.shardings),
                                              **kwargs)
  else:
    arch_step, weight_step = make_phase_steps(graphdef, w_tx, a_tx, **kwargs)

  def step(state, batch_train, batch_val):
    if weight_first:
      state, m_weight = weight_step(state, batch_train)
      state, m_arch = arch_step(state, batch_train, batch_val)
    else:
      state, m_arch = arch_step(state, batch_train, batch_val)
      state, m_weight = weight_step(state, batch_train)
    return state, {**m_arch, **m_weight}

  def warmup_step(state, batch_train, batch_val):
    del batch_val
    return weight_step(state, batch_train)

  if not execution.jit or split:
    return step, warmup_step
  return tuple(jax.jit(f, donate_argnums=0, **jit_shardings(execution.shardings, 2))
               for f in (step, warmup_step))


def make_search_step(graphdef, w_tx: optax.GradientTransformation,
                     a_tx: optax.GradientTransformation, *, arch: bool = True, **kwargs):
  """The search step of `make_search_steps` (with `arch=False`, its warm-up step)."""
  step, warmup_step = make_search_steps(graphdef, w_tx, a_tx, **kwargs)
  return step if arch else warmup_step


