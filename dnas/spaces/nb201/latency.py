"""Latency of NAS-Bench-201 networks: a cell model fitted to measured networks, and its
exact, differentiable expected latency under the architecture weights.

A built network computes only the edges on a path from the cell's input to its output
(an edge whose input no path reaches, or whose output reaches nothing, is dead code once
a `none` cuts it off). The model (`features`): a fixed part, a cost per (edge, op) of
each *active* edge, and a cost per co-active pair of ops by how their edges relate (same
target node, one feeding the other, same source, apart), which captures what a sum of
per-op costs misses (node sums, memory traffic). It is fitted to whole-network latencies
by least squares on relative error (`fit`), and stored as a `LatencyTable` whose entries
are its coefficients (`edge<e>:<op>`, `pair:<relation>:<op>+<op>`, `fixed`).

E[LAT](alphas) = sum over the architectures a of prod_e p_e(a_e) LAT(a), p_e =
softmax(alpha_e): exact (the 5^6 = 15,625 architectures are enumerated once) and
differentiable, as FBNet's Eq. 4 is for an additive table.
"""

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dnas.latency.table import LatencyError, LatencyTable, device_stamp, time_call
from dnas.spaces.nb201.ops import NAS_BENCH_201
from dnas.spaces.nb201.structure import EDGES, MAX_NODES, Structure

RELATIONS = ("same_target", "sequential", "same_source", "apart")
_LIVE_OPS = NAS_BENCH_201[1:]


def active_edges(ops) -> list[bool]:
  """Per edge (EDGES order): not `none` and on a path from node 0 to the last node."""
  live = [op != "none" for op in ops]
  reach = {0}
  for i in range(1, MAX_NODES):
    if any(live[e] and j in reach for e, (ii, j) in enumerate(EDGES) if ii == i):
      reach.add(i)
  feeds = {MAX_NODES - 1}
  for j in range(MAX_NODES - 2, -1, -1):
    if any(live[e] and i in feeds for e, (i, jj) in enumerate(EDGES) if jj == j):
      feeds.add(j)
  return [live[e] and j in reach and i in feeds for e, (i, j) in enumerate(EDGES)]


def _relation(e1: int, e2: int) -> str:
  (i1, j1), (i2, j2) = EDGES[e1], EDGES[e2]
  if i1 == i2:
    return "same_target"
  if i1 == j2 or i2 == j1:
    return "sequential"
  return "same_source" if j1 == j2 else "apart"


def feature_names() -> list[str]:
  edge = [f"edge{e}:{op}" for e in range(len(EDGES)) for op in _LIVE_OPS]
  pair = [f"pair:{r}:{a}+{b}" for r in RELATIONS
          for a, b in itertools.combinations_with_replacement(_LIVE_OPS, 2)]
  return edge + pair + ["fixed"]


def features(arch: Structure) -> np.ndarray:
  """f64[F] counts of the model's terms in `arch` (`feature_names` order)."""
  names = {n: k for k, n in enumerate(feature_names())}
  f = np.zeros(len(names))
  act = active_edges(arch.ops)
  on = [(e, op) for e, (op, a) in enumerate(zip(arch.ops, act)) if a]
  for e, op in on:
    f[names[f"edge{e}:{op}"]] += 1
  for (e1, o1), (e2, o2) in itertools.combinations(on, 2):
    a, b = sorted((o1, o2), key=_LIVE_OPS.index)
    f[names[f"pair:{_relation(e1, e2)}:{a}+{b}"]] += 1
  f[names["fixed"]] = 1
  return f


def fit(latency_ms: dict, *, meta: dict, ridge: float = 0.01) -> LatencyTable:
  """A cell-model table from measured networks {arch string: ms}: least squares on the
  relative error, sum_a ((pred_a - y_a) / y_a)^2 + ridge |w|^2 (the constant unpenalised);
  terms no network exercises are 0. `meta`: the table's device stamp and provenance."""
  archs = [Structure.from_string(a) for a in latency_ms]
  X = np.stack([features(a) for a in archs])
  y = np.asarray([latency_ms[str(a)] for a in archs], np.float64)
  wt = 1.0 / y ** 2
  A = X.T @ (X * wt[:, None]) + ridge * np.diag([1.0] * (X.shape[1] - 1) + [0.0])
  coef = np.linalg.lstsq(A, X.T @ (wt * y), rcond=None)[0]
  seen = X.sum(0) > 0
  entries = {n: {"median": float(c) if s else 0.0}
             for n, c, s in zip(feature_names(), coef, seen)}
  fitted = X @ coef
  return LatencyTable(dict(meta, model="nb201-cell-pairs/1", networks=len(y),
                           fit_mape_pct=round(float(100 * np.mean(np.abs(fitted - y) / y)), 3)),
                      entries)


def profile(compile_fn: Callable, archs, *, batch_size: int, dtype: str, repeats: int = 50,
            rounds: int = 3, progress: Callable | None = None) -> LatencyTable:
  """A cell-model table of this device: each of `archs` compiled (`compile_fn(arch) ->
  (forward, args)`), timed in `rounds` interleaved rounds of `repeats` calls (so a slow
  spell of the machine spreads over all networks), the median of its round medians; then
  `fit`. `progress(i, n, arch string, ms)` after the last round."""
  compiled = [compile_fn(a) for a in archs]
  times = [[] for _ in archs]
  for _ in range(rounds):
    for i, (forward, args) in enumerate(compiled):
      times[i].append(time_call(forward, *args, repeats=repeats)["median"])
  measured = {}
  for i, (a, t) in enumerate(zip(archs, times)):
    measured[str(a)] = float(np.median(t))
    if progress:
      progress(i + 1, len(archs), str(a), measured[str(a)])
  # Whole networks are timed: the call's dispatch is in the fit's fixed term, not apart.
  meta = dict(device_stamp(), batch_size=batch_size, dtype=dtype, unit="ms", repeats=repeats,
              dispatch_ms=0.0, source=f"{len(archs)} networks measured here, {rounds} rounds")
  return fit(measured, meta=meta)


def coefficients(table: LatencyTable) -> np.ndarray:
  if table.meta.get("model") != "nb201-cell-pairs/1":
    raise LatencyError("not a NAS-Bench-201 cell-model table (meta.model "
                       "'nb201-cell-pairs/1'); fit one with dnas.spaces.nb201.latency.fit")
  return np.asarray([table.entries[n]["median"] if n in table.entries else 0.0
                     for n in feature_names()], np.float64)


class CellLatency:
  """A cell-model table's view of the space for the latency objectives: `expected`
  (f32[] ms, differentiable in the alphas), `predict(arch)`, `minimum()`.

  Args:
    table: a cell-model `LatencyTable`.
    primitives: the supernet's candidate ops (its alpha columns).
  """

  def __init__(self, table: LatencyTable, primitives=NAS_BENCH_201):
    self.primitives = tuple(primitives)
    coef = coefficients(table)
    self.choices = np.asarray(list(itertools.product(range(len(self.primitives)),
                                                     repeat=len(EDGES))), np.int32)
    archs = [Structure(tuple(self.primitives[k] for k in row)) for row in self.choices]
    self.lat = np.stack([features(a) for a in archs]) @ coef  # f64[K^6]
    self._coef = coef

  def predict(self, arch) -> float:
    arch = arch if isinstance(arch, Structure) else Structure.from_string(str(arch))
    return float(features(arch) @ self._coef)

  def minimum(self) -> float:
    return float(self.lat.min())

  def expected(self, alphas) -> jax.Array:
    """E[LAT] in ms under p = softmax(alphas) per edge (`alphas`: the search state's
    ArchParam state, or f32[6, K])."""
    logits = alphas["alphas"][...] if not hasattr(alphas, "shape") else alphas
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return self._mean(p)

  def derived(self, alphas) -> jax.Array:
    """The derived architecture's predicted latency (ms, f32[]) with a straight-through
    gradient: p_st = onehot(argmax p) + p - stop_gradient(p) per edge, so the value is
    lat(argmax) and d/dp[e, k] the latency of the argmax with edge e set to op k."""
    logits = alphas["alphas"][...] if not hasattr(alphas, "shape") else alphas
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1], dtype=p.dtype)
    return self._mean(hard + p - jax.lax.stop_gradient(p))

  def _mean(self, p):
    probs = jnp.prod(p[jnp.arange(len(EDGES)), self.choices], axis=-1)  # f32[K^6]
    return jnp.sum(probs * jnp.asarray(self.lat, jnp.float32))

  __call__ = expected
