"""DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS): each edge's op weights are a
sample of a Dirichlet whose concentration is ELU(alpha) + 1, drawn afresh for every
forward pass and differentiated pathwise (relaxation "dirichlet", `dnas.arch.op_weights`).

The anchor regulariser keeps the Dirichlet near a reference. The official code's default
(`reg_type='l2'`, `reg_scale=1e-3`) is an L2 penalty on alpha through the architecture
Adam's weight decay; its `reg_type='kl'` adds reg_scale * sum over edges of
KL(Dir(beta) || Dir(1)) to the architecture loss and turns that weight decay off.
"""

import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

from dnas.arch import dirichlet_concentration, op_logits

REGULARISERS = ("l2", "kl")


def kl_to_uniform(logits: jnp.ndarray) -> jnp.ndarray:
  """KL(Dir(beta) || Dir(1, ..., 1)) per row, beta = ELU(alpha) + 1 (the closed form of
  the KL between Dirichlets, with lnGamma(1) = 0). f32[rows, K] -> f32[rows]."""
  beta = dirichlet_concentration(logits)
  b0 = jnp.sum(beta, axis=-1)
  k = beta.shape[-1]
  return (gammaln(b0) - jnp.sum(gammaln(beta), axis=-1) - gammaln(float(k))
          + jnp.sum((beta - 1.0) * (digamma(beta) - digamma(b0)[..., None]), axis=-1))


def kl_term(scale: float):
  """The architecture-loss term (alphas, step) -> (scale * sum of the edges' KLs, metrics)."""
  def term(alphas, step):
    del step
    kl = sum(jnp.sum(kl_to_uniform(x)) for x in op_logits(alphas))
    return scale * kl, {"drnas_kl": kl}
  return term
