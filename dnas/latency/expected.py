"""Expected latency: one class for every space (FBNet Eq. 4, ProxylessNAS Eq. 5).

A space describes its final network's latency as a fixed part and groups of slots: group
g is a matrix LAT_g f64[R, K], the latency (ms) of candidate op k in slot row r, summed
over every place of the final network that row stands for (DARTS: an edge of the normal
cell, summed over all normal cells). The architecture weights give each entry a
probability mass W_g(alphas) f32[R, K], and

  E[LAT](alphas) = fixed + sum_g sum_{r,k} W_g[r, k] LAT_g[r, k],

differentiable in the alphas. A discrete architecture keeps entries (r, k) of each group,
and its predicted latency is fixed + the sum of their LAT_g[r, k].
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ExpectedLatency:
  """A table's view of a space's final network, what the search's latency objective and
  the per-epoch prediction use.

  fixed_ms: the parts no choice changes, with the network's one dispatch.
  lat: {group: f64[R, K]} ms per slot row and candidate.
  weights(alphas) -> {group: f32[R, K]}: probability mass of each entry under the
    architecture parameters (the search state's `ArchParam` state).
  picks(arch) -> {group: [(row, k), ...]}: the entries a discrete architecture keeps.
  minimum_ms: a lower bound of E[LAT] and of every derived network's latency (the
    objectives are checked against it).
  """
  fixed_ms: float
  lat: Mapping[str, np.ndarray]
  weights: Callable[..., Mapping[str, jax.Array]]
  picks: Callable[..., Mapping[str, Iterable[tuple[int, int]]]]
  minimum_ms: float

  def expected(self, alphas) -> jax.Array:
    """E[LAT] in ms, f32[]."""
    total = jnp.asarray(self.fixed_ms, jnp.float32)
    for group, w in self.weights(alphas).items():
      total = total + jnp.sum(w * jnp.asarray(self.lat[group], jnp.float32))
    return total

  __call__ = expected

  def straight_through(self, alphas, hard: Mapping[str, jax.Array]) -> jax.Array:
    """The latency of the discrete entries `hard` ({group: 0/1 f32[R, K]}, e.g. the
    derived architecture's) with E[LAT]'s gradient: W + stop_gradient(hard - W)."""
    total = jnp.asarray(self.fixed_ms, jnp.float32)
    for group, w in self.weights(alphas).items():
      st = w + jax.lax.stop_gradient(jnp.asarray(hard[group], w.dtype) - w)
      total = total + jnp.sum(st * jnp.asarray(self.lat[group], jnp.float32))
    return total

  def predict(self, arch) -> float:
    """Predicted latency (ms) of the final network of a discrete architecture."""
    return float(self.fixed_ms + sum(self.lat[g][r, k] for g, entries in self.picks(arch).items()
                                     for r, k in entries))

  def minimum(self) -> float:
    return float(self.minimum_ms)
