"""beta-DARTS (Ye et al., CVPR 2022; Sunshine-Ye/Beta-DARTS): the beta-decay regulariser.

L_beta = mean over edges of logsumexp_k(alpha_{e,k}) (the official `mlc_loss`), on the
raw logits, is added to the architecture loss with a weight that grows linearly over the
search: lambda(epoch) = lambda_max * epoch / epochs (the official NAS-Bench-201 run:
50 * epoch / 100, from 0 to 49.5). Its gradient in alpha_e is softmax(alpha_e) / E: each
step lowers every logit in proportion to its op's weight, holding back the ops that lead
(the "decay" of the softmaxed weights beta).

The official code wires it up for NAS-Bench-201 only (one 6 x 5 logit matrix); on the
DARTS space dnas takes the mean over the rows of both cell types (BUILD_NOTES.md).
"""

import jax
import jax.numpy as jnp

from dnas.arch import op_logits


def beta_decay(alphas) -> jax.Array:
  """Mean over all edges (rows of every op-logit array) of logsumexp over their ops."""
  rows = jnp.concatenate([jax.nn.logsumexp(x.astype(jnp.float32), axis=-1)
                          for x in op_logits(alphas)])
  return jnp.mean(rows)


def beta_term(lambda_max: float, epochs: int, steps_per_epoch: int):
  """(alphas, step) -> (lambda(epoch) * L_beta, metrics), epoch = step // steps_per_epoch."""
  def term(alphas, step):
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    lam = lambda_max * epoch / epochs
    value = beta_decay(alphas)
    return lam * value, {"beta_decay": value, "beta_lambda": lam}
  return term
