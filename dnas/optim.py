"""Optimisers and schedules of the search and of retraining, as the reference code runs
them (PyTorch SGD and Adam with coupled weight decay, schedules stepped per epoch):
Optax `GradientTransformation`s and schedules `count -> f32[]`."""

import jax
import jax.numpy as jnp
import optax


def per_epoch_cosine(base_lr: float, min_lr: float, epochs: int,
                     steps_per_epoch: int) -> optax.Schedule:
  """Cosine annealing stepped once per epoch, as the reference runs it (PyTorch 0.3.1
  `CosineAnnealingLR`): epoch e uses min + (base - min) (1 + cos(pi e / epochs)) / 2."""
  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def per_epoch_anneal(start: float, end: float, epochs: int, steps_per_epoch: int,
                     kind: str = "linear") -> optax.Schedule:
  """A temperature annealed once per epoch from `start` (epoch 0) to `end` (last epoch):
  "linear" as GDAS, "exponential" (geometric) as FBNet's tau_0 * 0.956^epoch."""
  if kind not in ("linear", "exponential"):
    raise ValueError(f"anneal kind {kind!r} is unknown; valid: linear, exponential")

  def schedule(count):
    frac = jnp.minimum(count // steps_per_epoch, epochs - 1) / max(epochs - 1, 1)
    if kind == "linear":
      return start + (end - start) * frac
    return start * (end / start) ** frac
  return schedule


def make_w_tx(lr: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 3e-4,
              grad_clip: float | None = 5.0, nesterov: bool = False, *,
              weight_decay_in_state: bool = False) -> optax.GradientTransformation:
  """The reference weight optimiser: clip the gradient's global norm, then PyTorch SGD
  (coupled L2 weight decay, heavy-ball momentum buf = mu buf + g, step -lr buf; with
  `nesterov`, PyTorch's Nesterov step -lr (g + mu buf), as NAS-Bench-201's scripts use).

  The clipping is stateless and wraps the SGD part, so the optimiser with and without
  `grad_clip` has one state structure: the unclipped one is DARTS's virtual step
  (`hypergrad.unrolled`) on the clipped one's state.

  `weight_decay_in_state`: the decay is a hyperparameter in the optimiser's state
  (`optax.inject_hyperparams`, f32[]) instead of a constant of the program, so that a run
  changes it (`set_weight_decay`; DARTS-ADA's rollbacks) without compiling again."""
  decay = (optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=weight_decay)
           if weight_decay_in_state else optax.add_decayed_weights(weight_decay))
  sgd = optax.chain(decay,
                    optax.trace(decay=momentum, nesterov=nesterov),
                    optax.scale_by_learning_rate(lr))
  if not grad_clip:
    return sgd
  clip = optax.clip_by_global_norm(grad_clip)

  def update(grads, state, params=None):
    return sgd.update(clip.update(grads, optax.EmptyState())[0], state, params)
  return optax.GradientTransformation(sgd.init, update)


def _is_decay_state(x) -> bool:
  return "weight_decay" in getattr(x, "hyperparams", {})


def set_weight_decay(opt_state, value: float):
  """`opt_state` of `make_w_tx(..., weight_decay_in_state=True)` with its weight decay set
  to `value` (same dtype and placement); raises ValueError for a state without one."""
  found = []

  def replace(x):
    if not _is_decay_state(x):
      return x
    found.append(x)
    old = x.hyperparams["weight_decay"]
    new = jax.device_put(jnp.asarray(value, old.dtype), getattr(old, "sharding", None))
    return x._replace(hyperparams=dict(x.hyperparams, weight_decay=new))
  out = jax.tree.map(replace, opt_state, is_leaf=_is_decay_state)
  if not found:
    raise ValueError("the optimiser state keeps no weight decay (build it with "
                     "make_w_tx(..., weight_decay_in_state=True))")
  return out


def then(tx: optax.GradientTransformation, stateless: optax.GradientTransformation
         ) -> optax.GradientTransformation:
  """`tx`, its updates then passed through the stateless `stateless`, with `tx`'s own
  state structure (so a checkpoint or state built without `stateless` fits)."""
  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    return stateless.update(updates, optax.EmptyState(), params)[0], state
  return optax.GradientTransformation(tx.init, update)


def rescale_sampled_logits() -> optax.GradientTransformation:
  """ProxylessNAS's rescaling after an architecture update in its two-path mode
  (mit-han-lab/proxylessnas `MixedEdge.rescale_updated_arch_param`): the logits the
  update changed (each row's two sampled paths) shift together so that their
  log-sum-exp stays, and with it the probabilities of the paths not sampled. Rows are the
  last axis of each leaf. For an optimiser whose update is 0 where the gradient is
  (ProxylessNAS's Adam with b1 = 0); with momentum every logit changes and the shift only
  normalises the row, which softmax ignores."""
  def rescale(u, p):
    changed = u != 0

    def logsumexp(x):
      m = jnp.max(jnp.where(changed, x, -jnp.inf), -1, keepdims=True)
      m = jnp.where(jnp.isfinite(m), m, 0.0)
      return m + jnp.log(jnp.sum(jnp.where(changed, jnp.exp(x - m), 0.0), -1, keepdims=True))

    offset = jnp.where(jnp.any(changed, -1, keepdims=True),
                       logsumexp(p + u) - logsumexp(p), 0.0)
    return u - jnp.where(changed, offset, 0.0).astype(u.dtype)

  def update(updates, state, params):
    return jax.tree.map(rescale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_a_tx(lr: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
              weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """The reference architecture optimiser: PyTorch Adam with coupled L2 weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8),
                     optax.scale_by_learning_rate(lr))
