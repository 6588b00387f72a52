"""Selection: how the trained supernet becomes one architecture, after the search.

A selection rule is a function `rule(ctx: Context) -> arch`. DARTS takes the argmax of
the architecture weights (`argmax`, the default, `config.search.selection="argmax"`);
perturbation-based selection (DARTS-PT, Wang et al. ICLR 2021) masks candidate ops and
measures the supernet's validation accuracy, fine-tuning between decisions, which is
what `Context` carries the functions for; single-path one-shot NAS (SPOS, RANDOM-NAS)
scores candidate architectures with the supernet's shared weights (`supernet`).
`latency.limit_ms` bounds what `argmax` and `supernet` may return by the architecture's
predicted latency. Register a rule in `SELECTIONS`.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import parallel


class Context(NamedTuple):
  """What a selection rule may use.

  space: the search space (`dnas.spaces.SearchSpace`); config: the search config (the
    selection's own settings: seed, `search.*`, `darts_pt.*`, `latency.limit_ms`);
    model: the space's section (`dnas.config.space_section`).
  state: the final `bilevel.SearchState` (device arrays).
  evaluate(state, inputs=None) -> (loss, accuracy): the supernet of `state` on the
    validation split, called with the keyword `inputs` (e.g. {"weights": f32[E, K]}).
  train(state, batches, inputs=None) -> state: weight steps (alphas fixed) over
    `batches`, an iterator of the weight split's batches (`weight_batches(epoch)` gives
    that epoch's), the supernet called with `inputs` if given. It donates the state it
    is given: use the state it returns.
  score(state, weights) -> f64[A]: the supernet of `state` on the validation split with
    each of the op weights `weights` (f32[A, ...], one row per architecture: the
    supernet's `weights` input), many at once; the same on every host.
  latency: the space's latency model (`predict(arch) -> ms`) of `config.latency`, or None.
  """
  space: Any
  config: Any
  model: Any
  state: Any
  evaluate: Callable[[Any], tuple[float, float]]
  train: Callable[[Any, Iterator], Any]
  weight_batches: Callable[[], Iterator]
  score: Callable[[Any, np.ndarray], np.ndarray] | None = None
  latency: Any = None


def candidates(space, model, limit_ms: float = 0.0, latency=None) -> list:
  """The space's architectures (over `model.primitives`), only those that the latency
  model predicts within `limit_ms` (`latency.limit_ms`) when it is > 0."""
  limit = limit_ms
  archs = space.candidates(model)
  if limit > 0:
    archs = [a for a in archs if latency.predict(a) <= limit]
  if not archs:  # the latency setup checks the limit against the fastest architecture
    raise ValueError(f"no candidate architecture within latency.limit_ms {limit}")
  return archs


def most_probable(space, alphas, model, archs):
  """The architecture of `archs` with the largest sum over edges of the log of the
  method's op weights (`space.log_prob`): the argmax derivation restricted to `archs`."""
  return archs[int(np.argmax(space.log_prob(alphas, archs, model)))]


def argmax(ctx: Context):
  """DARTS: the space's own derivation from the final architecture weights; with
  `latency.limit_ms`, the most probable architecture within the limit."""
  alphas = parallel.to_host(ctx.state.alphas)
  limit = ctx.config.latency.limit_ms
  if limit <= 0:
    return ctx.space.derive(alphas, ctx.model)
  return most_probable(ctx.space, alphas, ctx.model,
                       candidates(ctx.space, ctx.model, limit, ctx.latency))


def perturbation(ctx: Context):
  """DARTS-PT (Wang et al., ICLR 2021; ruocwang/darts-pt): the space's perturbation-based
  projection (`space.pt_select(ctx)`), which masks each candidate op of an edge in turn
  and keeps the op whose removal hurts the supernet's validation accuracy most."""
  return ctx.space.pt_select(ctx)


def supernet(ctx: Context):
  """Single-path one-shot selection (SPOS, Guo et al. ECCV 2020, Sec. 3.3; RANDOM-NAS,
  AutoDL's `search_find_best`): of `search.select_num` candidates drawn uniformly from
  the space's architectures within `latency.limit_ms` (0: all of them), the one the
  supernet scores best on the validation split with its one-hot op weights, BatchNorm
  on each candidate's batch statistics (SPOS recalibrates it per candidate; RANDOM-NAS
  keeps the running statistics of all paths). Exhaustive where SPOS runs an
  evolutionary search: NAS-Bench-201's space is enumerable."""
  archs = candidates(ctx.space, ctx.model, ctx.config.latency.limit_ms, ctx.latency)
  n = ctx.config.search.select_num
  if 0 < n < len(archs):
    pick = np.random.default_rng(ctx.config.seed).choice(len(archs), n, replace=False)
    archs = [archs[i] for i in np.sort(pick)]
  acc = ctx.score(ctx.state, np.stack([ctx.space.one_hot(a, ctx.model) for a in archs]))
  order = np.argsort(-acc, kind="stable")
  print(f"selection: the supernet's best of {len(archs)} candidates: "
        + ", ".join(f"{archs[i]} ({acc[i]:.4f})" for i in order[:3]), flush=True)
  return archs[int(order[0])]


@functools.partial(jax.jit, static_argnums=0)
def _accuracies(graphdef, state, w, batches):
  """f32[A]: accuracy on all `batches` (stacked: [B, ...]) with each op-weight row of
  `w` (f32[A, ...]); a static graphdef, so every supernet of one shape shares a program."""
  def one(w):
    def body(carry, b):
      logits = nnx.merge(graphdef, state, copy=True)(b["image"], weights=w)
      hit = (jnp.argmax(logits, -1) == b["label"]) * b["mask"]
      return (carry[0] + jnp.sum(hit), carry[1] + jnp.sum(b["mask"])), None
    (c, n), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), batches)
    return c / n
  return jax.vmap(one)(w)


def one_hot_accuracies(net: nnx.Module, weights: np.ndarray, batches: Sequence[dict],
                       chunk: int = 16) -> np.ndarray:
  """f64[A]: the supernet `net`'s accuracy on `batches` (dicts of image, label, mask)
  with each row of `weights` (f32[A, ...], e.g. one-hot op weights) as its op weights,
  in its current mode (eval: BatchNorms with running statistics use them, the search
  cells' that keep none use the batch's; train: every BatchNorm uses the batch's, each
  candidate its own, and `net` is not changed).

  One program scans all batches for `chunk` architectures at once: one dispatch and one
  host sync per chunk, not per batch and architecture."""
  graphdef, state = nnx.split(net)
  stacked = {k: jnp.asarray(np.stack([b[k] for b in batches]))
             for k in ("image", "label", "mask")}
  w = np.asarray(weights, np.float32)
  chunk = min(chunk, len(w))
  pad = -len(w) % chunk  # every chunk the same shape: one compile
  w = np.concatenate([w, np.repeat(w[:1], pad, 0)]) if pad else w
  out = [np.asarray(_accuracies(graphdef, state, jnp.asarray(w[i:i + chunk]), stacked))
         for i in range(0, len(w), chunk)]
  return np.concatenate(out)[:len(weights)].astype(np.float64)


SELECTIONS: dict[str, Callable[[Context], Any]] = {"argmax": argmax, "pt": perturbation,
                                                   "supernet": supernet}
