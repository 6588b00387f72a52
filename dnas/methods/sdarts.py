"""SDARTS (Chen & Hsieh, ICML 2020; xiangning-chen/SmoothDARTS): the weight step trains on
perturbed op weights, which smooths the validation loss in alpha (the paper's implicit
regularisation of the Hessian's dominant eigenvalue).

The perturbation acts on the op weights p = softmax(alpha) of every edge, inside an L-inf
ball of radius epsilon that grows linearly over the search (the official schedule:
epsilon(epoch) = 0.03 + (0.3 - 0.03) * epoch / epochs), and is brought back to the
simplex by the official `clip`: clamp to [0, 1], a row that became all zero takes its
argmax, divide by the row's sum.
- RS: p + U(-epsilon, epsilon), clipped.
- ADV: projected gradient ascent of the weight step's training loss from a random start,
  7 steps of 2 epsilon / 7 along the gradient's sign, each projected back into the ball
  and clipped; kept only if it raised the loss (else the unperturbed p).
The weight step's forward pass gets log(p) as its logits (softmax(log p) = p on the
simplex); the architecture step is not perturbed.

Deviations (BUILD_NOTES.md): ADV's ascent direction is the gradient in these logits, whose
sign is that of the gradient along the simplex (dL/dp_i minus its p-weighted mean over
the row), where the official code differentiates the raw weights; and its passes use the
weight step's BatchNorm mode (batch statistics), where the official attack runs in eval
mode (on NAS-Bench-201 with track_running_stats=False the two agree).
"""

import jax
import jax.numpy as jnp

from dnas.arch import map_op_logits, op_logits

KINDS = ("random", "adversarial")
_FLOOR = 1e-30  # log(0) would be -inf; softmax(log 1e-30) is 0 beside any live op


def epsilon_at(step, *, epsilon: float, epsilon_min: float, epochs: int,
               steps_per_epoch: int) -> jax.Array:
  """The official linear schedule by epoch: epsilon_min + (epsilon - epsilon_min) * e / E."""
  epoch = (step // steps_per_epoch).astype(jnp.float32)
  return epsilon_min + (epsilon - epsilon_min) * epoch / epochs


def clip(p: jax.Array, before: jax.Array | None = None) -> jax.Array:
  """The official `clip` per row: clamp to [0, 1]; a row that is then all zero becomes the
  one-hot of its argmax (of `before`, the unclamped row, by default `p`); divide by the
  row's sum. f32[rows, K] -> f32[rows, K] on the simplex."""
  before = p if before is None else before
  q = jnp.clip(p, 0.0, 1.0)
  total = jnp.sum(q, axis=-1, keepdims=True)
  q = jnp.where(total > 0, q, jax.nn.one_hot(jnp.argmax(before, -1), p.shape[-1]))
  return q / jnp.sum(q, axis=-1, keepdims=True)


def _as_logits(p):
  return jnp.log(jnp.maximum(p, _FLOOR))


def _probabilities(alphas) -> list[jax.Array]:
  return [jax.nn.softmax(x.astype(jnp.float32), axis=-1) for x in op_logits(alphas)]


def _with(alphas, rows):
  it = iter(rows)
  return map_op_logits(lambda _: _as_logits(next(it)), alphas)


def random_perturbation(alphas, key, eps) -> list[jax.Array]:
  """SDARTS-RS: clip(p + U(-eps, eps)) per op-logit array (f32[rows, K] each)."""
  out = []
  for p in _probabilities(alphas):
    key, sub = jax.random.split(key)
    noisy = p + jax.random.uniform(sub, p.shape, jnp.float32, -eps, eps)
    out.append(clip(noisy))
  return out


def make_perturb(kind: str, *, epsilon: float, epsilon_min: float, epochs: int,
                 steps_per_epoch: int, steps: int = 7):
  """The weight step's hook (`bilevel.make_phase_steps`'s `perturb`): (alphas, key, step,
  alpha_grad) -> alphas whose softmax is the perturbed p."""
  if kind not in KINDS:
    raise ValueError(f"SDARTS perturbation {kind!r} is unknown; valid: {', '.join(KINDS)}")

  def perturb(alphas, key, step, alpha_grad):
    eps = epsilon_at(step, epsilon=epsilon, epsilon_min=epsilon_min, epochs=epochs,
                     steps_per_epoch=steps_per_epoch)
    start = random_perturbation(alphas, key, eps)
    if kind == "random":
      return _with(alphas, start)
    p0 = _probabilities(alphas)
    size = 2.0 * eps / steps

    def ascend(_, ps):
      _, g = alpha_grad(_with(alphas, ps))
      out = []
      for p, base, d in zip(ps, p0, op_logits(g)):
        moved = p + size * jnp.sign(d)
        out.append(clip(base + jnp.clip(moved - base, -eps, eps)))
      return out
    attacked = jax.lax.fori_loop(0, steps, ascend, start)
    loss_clean, _ = alpha_grad(alphas)
    loss_attacked, _ = alpha_grad(_with(alphas, attacked))
    # Kept only if it raised the training loss (the official `if loss < loss_before`).
    return jax.tree.map(lambda a, b: jnp.where(loss_attacked >= loss_clean, a, b),
                        _with(alphas, attacked), alphas)
  return perturb
