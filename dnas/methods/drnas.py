"""DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS): each edge's op weights are a
sample of a Dirichlet whose concentration is ELU(alpha) + 1, drawn afresh for every
forward pass and differentiated pathwise (relaxation "dirichlet", `dnas.arch.op_weights`).

The anchor regulariser keeps the Dirichlet near a reference. The official code's default
(`reg_type='l2'`, `reg_scale=1e-3`) is an L2 penalty on alpha through the architecture
Adam's weight decay; its `reg_type='kl'` adds reg_scale * sum over edges of
KL(Dir(beta) || Dir(1)) to the architecture loss and turns that weight decay off.
"""

import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
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


# DrNAS's progressive learning (the official DARTS-space train_search.py): the search
# runs in stages; between two, each edge keeps its `keep` strongest ops and the partial
# channels widen to 1/k (Net2Wider), the weight optimiser's momentum widened alike.


def prune(logits: np.ndarray, num_keep: int, mask: np.ndarray | None = None):
  """The official `prune`: per row, the `num_keep` largest logits among the unpruned ones
  stay (their values kept), the rest become 0 and leave the mask.
  f32[E, K], int, bool[E, K] | None -> (f32[E, K], bool[E, K])."""
  x = np.asarray(logits, np.float64).copy()
  if mask is not None:
    x[~np.asarray(mask, bool)] = -np.inf
  keep = np.argsort(-x, axis=-1, kind="stable")[:, :num_keep]
  new_mask = np.zeros(x.shape, bool)
  np.put_along_axis(new_mask, keep, True, axis=-1)
  return np.where(new_mask, logits, 0.0).astype(np.asarray(logits).dtype), new_mask


def masked(weights, mask):
  """Op weights renormalised over the unpruned ops (the official `process_step_vector`
  with a mask: a Dirichlet sample so restricted is a Dirichlet sample of the kept
  concentrations). f32[E, K], bool[E, K] -> f32[E, K]."""
  w = weights * jnp.asarray(mask, weights.dtype)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def masked_logits(logits, mask):
  """Logits with pruned entries -inf: softmax, sigmoid and the Dirichlet mean give them
  0 (what derivation and logging read). f32[E, K], bool[E, K] | None -> f32[E, K]."""
  if mask is None:
    return logits
  return np.where(np.asarray(mask, bool), np.asarray(logits), -np.inf)


_ROOT = re.compile(r"(\['cells'\]\[\d+\]\['ops'\]\[\d+\]\['ops'\]\[\d+\])(.*)")


def widen(old, new, seed: int, params=None):
  """The arrays of `new` (a tree of the widened supernet's shapes: weights, statistics or
  the weight optimiser's state) from those of `old`: equal shapes copied; a candidate
  op's channel axes widened by Net2Wider (Chen et al. 2016; the official `net2wider.py`,
  not function-preserving: no division by the copies), new channel i a copy of old
  channel idx[i], idx drawn at random (from `seed`, the op's path and the width) once per
  op and width, so consecutive layers of an op stay paired (the official draws a new
  index per layer) and the weights and their momentum widen alike. A FactorizedReduce's
  BatchNorm widens each of its two halves (found in `params`, the weights: default
  `old`; pass them when `old` is the statistics)."""
  def idx(root: str, n: int, m: int):
    rng = np.random.default_rng([seed, zlib.crc32(root.encode()), n])
    return rng.integers(0, n, size=m - n)

  def one(path, o, n):
    o_arr, shape = np.asarray(o), tuple(np.shape(n))
    if o_arr.shape == shape:
      return o_arr
    match = _ROOT.search(jax.tree_util.keystr(path))
    if match is None:
      raise ValueError(f"cannot widen {jax.tree_util.keystr(path)}: {o_arr.shape} -> {shape} "
                       f"outside a candidate op")
    root, rest = match.groups()
    x = o_arr
    for axis, (a, b) in enumerate(zip(o_arr.shape, shape)):
      if a == b:
        continue
      if "['bn']" in rest and root in fr_roots:  # [conv_1 half, conv_2 half]
        h, h2 = a // 2, b // 2
        i = idx(root, h, h2)
        halves = np.split(x, 2, axis=axis)
        x = np.concatenate([np.concatenate([p, np.take(p, i, axis=axis)], axis=axis)
                            for p in halves], axis=axis)
      else:
        x = np.concatenate([x, np.take(x, idx(root, a, b), axis=axis)], axis=axis)
    return x

  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(old if params is None else params)[0]]
  fr_roots = {m.group(1) for m in map(_ROOT.search, paths) if m and "['conv_1']" in m.group(2)}
  return jax.tree_util.tree_map_with_path(one, old, new)
