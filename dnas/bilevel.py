"""Bilevel optimisation of a supernet (DARTS Sec. 2.3): pure, jittable steps.

Weights w (`nnx.Param`) minimise the loss on the weight split; architecture logits
alpha (`ArchParam`) minimise the loss on the architecture split. One search step is,
as in the reference `train_search.py`, an architecture step followed by a weight step
on the same pair of batches.

  graphdef, state = init_search_state(net, w_tx, a_tx, key)
  step = make_search_step(graphdef, w_tx, a_tx, order="second", w_lr=schedule)
  state, metrics = step(state, batch_train, batch_val)

Architecture-gradient orders:
  first      grad_alpha L_val(w, alpha)                          (DARTS "first order")
  second     d/d alpha L_val(w'(alpha), alpha), w' one virtual weight step (Eq. 6-7),
             exactly: Eq. 7's Hessian-vector product by forward-over-reverse autodiff
  second_fd  Eq. 7 with the Hessian-vector product by central differences (Eq. 8)

The virtual step is the reference's: w' = w - eta (mu buf + grad_w L_train + wd w), with
the current learning rate eta, momentum mu and momentum buffer buf of the weight
optimiser, and no gradient clipping.

Batches are dicts {"image": f32[N, H, W, C], "label": int32[N]}.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dnas import autodiff, utils
from dnas.arch import ArchParam

ORDERS = ("first", "second", "second_fd")


class SearchState(NamedTuple):
  """Everything a search step reads and writes (a pytree)."""
  params: nnx.State        # network weights, nnx.Param
  alphas: nnx.State        # architecture logits, ArchParam
  batch_stats: nnx.State   # BatchNorm running statistics, nnx.BatchStat
  w_opt_state: optax.OptState
  a_opt_state: optax.OptState
  step: jax.Array          # int32[], search steps taken
  rng: jax.Array           # PRNG key for stochastic relaxations; DARTS steps draw nothing


def per_epoch_cosine(base_lr: float, min_lr: float, epochs: int,
                     steps_per_epoch: int) -> optax.Schedule:
  """Cosine annealing stepped once per epoch, as the reference runs it (PyTorch 0.3.1
  `CosineAnnealingLR`): epoch e uses min + (base - min) (1 + cos(pi e / epochs)) / 2."""
  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def make_w_tx(lr: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 3e-4,
              grad_clip: float | None = 5.0) -> optax.GradientTransformation:
  """The reference weight optimiser: clip the gradient's global norm, then PyTorch SGD
  (coupled L2 weight decay, heavy-ball momentum buf = mu buf + g, step -lr buf)."""
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
  parts += [optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum),
            optax.scale_by_learning_rate(lr)]
  return optax.chain(*parts)


def make_a_tx(lr: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
              weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """The reference architecture optimiser: PyTorch Adam with coupled L2 weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8),
                     optax.scale_by_learning_rate(lr))


def split_supernet(net: nnx.Module):
  """(graphdef, params, alphas, batch_stats) of a model in train mode."""
  graphdef, params, alphas, stats = nnx.split(net, nnx.Param, ArchParam, nnx.BatchStat)
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


def make_loss_fn(graphdef, dtype=None) -> Callable:
  """loss(params, alphas, stats, batch) -> (loss, (logits, new_stats)), pure.

  `dtype` is the activations' dtype (None: the weights' own): the weights are cast to it
  where they are used (so their gradients keep the weights' dtype), the alphas and
  statistics are not cast, and the loss is computed from float32 (or wider) logits.
  """
  def loss_fn(params, alphas, stats, batch):
    net = nnx.merge(graphdef, utils.cast_floating(params, dtype), alphas, stats, copy=True)
    out = net(utils.cast_floating(batch["image"], dtype))
    logits = utils.at_least_float32(out[0] if isinstance(out, tuple) else out)
    return cross_entropy(logits, batch["label"]), (logits, nnx.state(net, nnx.BatchStat))
  return loss_fn


def _trace(w_opt_state):
  """The momentum buffer of a `make_w_tx` optimiser state (zeros before the first step)."""
  return optax.tree_utils.tree_get(w_opt_state, "trace")


def make_arch_grad_fn(graphdef, *, order: str, w_lr: optax.ScalarOrSchedule,
                      momentum: float = 0.9, weight_decay: float = 3e-4,
                      fd_r: float = 1e-2, dtype=None) -> Callable:
  """Returns arch_grad(state, batch_train, batch_val) -> (d_alpha, new_stats, metrics).

  `new_stats` are the running statistics after the forward passes at the current
  weights that the order evaluates (the val batch for `first`, the train batch of the
  virtual step otherwise); the virtual and perturbed models do not update them.
  """
  if order not in ORDERS:
    raise ValueError(f"unknown order {order!r}; valid orders: {', '.join(ORDERS)}")
  loss_fn = make_loss_fn(graphdef, dtype)
  full_loss_fn = make_loss_fn(graphdef)
  eta_fn = w_lr if callable(w_lr) else (lambda _: w_lr)

  def virtual_step(state, batch_train, alphas):
    # DARTS Eq. 6 with the reference's momentum SGD: w' = w - eta (mu buf + g + wd w).
    (loss, (_, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, alphas, state.batch_stats, batch_train)
    eta = eta_fn(state.step)
    w_virtual = jax.tree.map(lambda w, gw, m: w - eta * (momentum * m + gw + weight_decay * w),
                             state.params, g, _trace(state.w_opt_state))
    return w_virtual, stats, eta, loss

  def first(state, batch_train, batch_val):
    del batch_train
    (loss, (logits, stats)), d_alpha = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
        state.params, state.alphas, state.batch_stats, batch_val)
    return d_alpha, stats, dict(a_loss=loss, a_acc=accuracy(logits, batch_val["label"]))

  def train_alpha_grad(loss, state, batch_train, params):
    return jax.grad(loss, argnums=1, has_aux=True)(
        params, state.alphas, state.batch_stats, batch_train)[0]

  def exact_hvp(state, batch_train, v):
    # grad^2_{alpha,w} L_train(w, alpha) v exactly: forward mode (a jvp along v in w) over
    # the reverse-mode alpha-gradient; memory of about one gradient with tangents.
    with autodiff.forward_mode_autodiff():
      return jax.jvp(lambda w: train_alpha_grad(loss_fn, state, batch_train, w),
                     (state.params,), (v,))[1]

  def fd_hvp(state, batch_train, v):
    # DARTS Eq. 8: (grad_a L_train(w+) - grad_a L_train(w-)) / 2R, w+- = w +- R v,
    # R = 0.01 / ||v||. In the weights' own dtype: a perturbation of norm 0.01 is far
    # below bfloat16's resolution of the weights, and w+ and w- would round together.
    R = fd_r / optax.tree.norm(v)
    grad_a = lambda w: train_alpha_grad(full_loss_fn, state, batch_train, w)
    g_pos = grad_a(jax.tree.map(lambda w, d: w + R * d, state.params, v))
    g_neg = grad_a(jax.tree.map(lambda w, d: w - R * d, state.params, v))
    return jax.tree.map(lambda p, n: (p - n) / (2 * R), g_pos, g_neg)

  def unrolled(hvp_fn):
    def arch_grad(state, batch_train, batch_val):
      # DARTS Eq. 7: dL_val(w'(alpha), alpha)/d alpha
      #   = grad_a L_val(w', alpha) - eta grad^2_{alpha,w} L_train(w, alpha) v,
      # v = grad_w' L_val(w', alpha); the momentum buffer and decay term of the virtual
      # step do not depend on alpha, so this is the whole derivative.
      w_virtual, stats, eta, _ = virtual_step(state, batch_train, state.alphas)
      (loss, (logits, _)), (v, d_alpha) = jax.value_and_grad(
          loss_fn, argnums=(0, 1), has_aux=True)(w_virtual, state.alphas, stats, batch_val)
      hvp = hvp_fn(state, batch_train, v)
      d_alpha = jax.tree.map(lambda d, h: d - eta * h, d_alpha, hvp)
      return d_alpha, stats, dict(a_loss=loss, a_acc=accuracy(logits, batch_val["label"]))
    return arch_grad

  return dict(first=first, second=unrolled(exact_hvp), second_fd=unrolled(fd_hvp))[order]


def make_phase_steps(graphdef, w_tx: optax.GradientTransformation,
                     a_tx: optax.GradientTransformation, *, order: str,
                     w_lr: optax.ScalarOrSchedule, momentum: float = 0.9,
                     weight_decay: float = 3e-4, fd_r: float = 1e-2, dtype=None):
  """The two phases as pure functions (not jitted); `dtype` as in `make_loss_fn`.

  Returns:
    arch_step(state, batch_train, batch_val) -> (state, metrics): updates alphas only.
    weight_step(state, batch_train) -> (state, metrics): updates weights only.
  """
  arch_grad = make_arch_grad_fn(graphdef, order=order, w_lr=w_lr, momentum=momentum,
                                weight_decay=weight_decay, fd_r=fd_r, dtype=dtype)
  loss_fn = make_loss_fn(graphdef, dtype)

  def arch_step(state, batch_train, batch_val):
    d_alpha, stats, metrics = arch_grad(state, batch_train, batch_val)
    updates, a_opt_state = a_tx.update(d_alpha, state.a_opt_state, state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)
    metrics["a_grad_norm"] = optax.tree.norm(d_alpha)
    return state._replace(alphas=alphas, batch_stats=stats, a_opt_state=a_opt_state), metrics

  def weight_step(state, batch_train):
    (loss, (logits, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.alphas, state.batch_stats, batch_train)
    updates, w_opt_state = w_tx.update(g, state.w_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(w_loss=loss, w_acc=accuracy(logits, batch_train["label"]),
                   w_grad_norm=optax.tree.norm(g))
    return state._replace(params=params, batch_stats=stats, w_opt_state=w_opt_state,
                          step=state.step + 1), metrics

  return arch_step, weight_step


def make_search_step(graphdef, w_tx: optax.GradientTransformation,
                     a_tx: optax.GradientTransformation, *, order: str = "first",
                     w_lr: optax.ScalarOrSchedule, momentum: float = 0.9,
                     weight_decay: float = 3e-4, fd_r: float = 1e-2, jit: bool = True,
                     shardings=None, dtype=None):
  """One search step (architecture step, then weight step) as one jitted function.

  `w_lr`, `momentum` and `weight_decay` must be those of `w_tx`: the virtual step of
  the second-order methods repeats the weight optimiser's step. `shardings`, a pair
  (state shardings, batch sharding) from `dnas.parallel`, runs the step as one SPMD
  program over their mesh; inputs must be placed accordingly. `dtype`: the activations'
  dtype (`make_loss_fn`).

  Returns:
    step(state, batch_train, batch_val) -> (state, metrics), `state` donated; metrics
    is a flat dict of f32[] scalars.
  """
  arch_step, weight_step = make_phase_steps(graphdef, w_tx, a_tx, order=order, w_lr=w_lr,
                                            momentum=momentum, weight_decay=weight_decay,
                                            fd_r=fd_r, dtype=dtype)

  def step(state, batch_train, batch_val):
    state, m_arch = arch_step(state, batch_train, batch_val)
    state, m_weight = weight_step(state, batch_train)
    return state, {**m_arch, **m_weight}

  if not jit:
    return step
  return jax.jit(step, donate_argnums=0, **_jit_shardings(shardings, 2))


def _jit_shardings(shardings, num_batches):
  """in/out shardings of f(state, *batches) -> (state, replicated metrics)."""
  if shardings is None:
    return {}
  state_sh, batch_sh = shardings
  replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
  return dict(in_shardings=(state_sh,) + (batch_sh,) * num_batches,
              out_shardings=(state_sh, replicated))


def make_eval_step(graphdef_eval, jit: bool = True, shardings=None, dtype=None):
  """eval(params, alphas, batch_stats, batch) -> (sum of losses, number correct, number of
  examples), with running BatchNorm statistics (the reference's `model.eval()`). Examples
  whose `batch["mask"]` (f32[N], optional) is 0 are padding and not counted. `dtype`:
  the activations' dtype."""
  def eval_step(params, alphas, stats, batch):
    net = nnx.merge(graphdef_eval, utils.cast_floating(params, dtype), alphas, stats, copy=True)
    out = net(utils.cast_floating(batch["image"], dtype))
    logits = utils.at_least_float32(out[0] if isinstance(out, tuple) else out)
    mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return ((losses * mask).sum(), jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            mask.sum())
  if not jit:
    return eval_step
  if shardings is None:
    return jax.jit(eval_step)
  state_sh, batch_sh = shardings
  replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
  return jax.jit(eval_step, in_shardings=(state_sh.params, state_sh.alphas,
                                          state_sh.batch_stats, batch_sh),
                 out_shardings=replicated)
