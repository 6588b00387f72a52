"""FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS): independent sigmoid op
weights (relaxation "sigmoid", `dnas.arch.op_weights`), so ops do not compete for one
unit of weight and skip connections cannot crowd the others out by exclusive
competition; and the zero-one loss, which pushes each sigmoid towards 0 or 1 so that the
continuous weights are close to the discrete choice:

  L = L_val - w_01 * mean over all ops of all edges of (sigmoid(alpha) - 0.5)^2

(the official `ConvSeparateLoss`, w_01 = `aux_loss_weight` = 10).

Selection: the official code keeps, per node, the two incoming edges of largest sigmoid
weight and on each the best op only if its sigmoid reaches 0.85 (`threshold_sparse`),
so a node may keep fewer than two edges. dnas's DARTS cells have exactly two inputs per
node: it keeps the two edges ranked by sigmoid (not softmax) weights, and reports how
many chosen ops fall below the threshold (`fair_below_threshold`) instead of dropping
them (BUILD_NOTES.md). On NAS-Bench-201 each edge takes its largest sigmoid.
"""

import jax
import jax.numpy as jnp

from dnas.arch import op_logits


def zero_one_loss(alphas) -> jax.Array:
  """-mean((sigmoid(alpha) - 0.5)^2) over every op of every edge (rows concatenated)."""
  s = jnp.concatenate([jax.nn.sigmoid(x.astype(jnp.float32)).ravel() for x in op_logits(alphas)])
  return -jnp.mean((s - 0.5) ** 2)


def zero_one_term(weight: float):
  """(alphas, step) -> (weight * zero_one_loss, metrics)."""
  def term(alphas, step):
    del step
    value = zero_one_loss(alphas)
    return weight * value, {"zero_one_loss": value}
  return term
