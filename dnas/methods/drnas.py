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

import tqdm

from dnas import parallel
from dnas.checkpoint import Checkpointer
from dnas.arch import dirichlet_concentration, op_logits
from dnas.errors import ConfigError
from dnas.methods.hooks import SearchHooks, SearchRun

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


def validate_stages(config) -> None:
  """One ConfigError line per mistake in the progressive stages (`drnas.stage_*`)."""
  d, m, s = config.drnas, config.model, config.search
  epochs, ks, keeps = (tuple(d.stage_epochs), tuple(d.stage_k), tuple(d.stage_keep))
  if not epochs:
    return
  if config.space != "darts" or not m.get("partial_channels"):
    raise ConfigError(f"drnas.stage_epochs (progressive learning) needs space darts with "
                      f"model.partial_channels=True, got space {config.space!r}")
  if not len(epochs) == len(ks) == len(keeps):
    raise ConfigError(f"drnas.stage_epochs, stage_k and stage_keep need one entry per stage, "
                      f"got {len(epochs)}, {len(ks)} and {len(keeps)}")
  if any(e <= s.arch_start_epoch for e in epochs) or sum(epochs) != s.epochs:
    raise ConfigError(f"drnas.stage_epochs {list(epochs)} must each exceed "
                      f"search.arch_start_epoch ({s.arch_start_epoch}: each stage warms up "
                      f"first) and sum to search.epochs ({s.epochs})")
  n = len(m.primitives)
  if ks[0] != m.pc_k or keeps[0] != n:
    raise ConfigError(f"the first stage is the supernet of the config: drnas.stage_k[0] must "
                      f"be model.pc_k ({m.pc_k}) and stage_keep[0] all {n} ops, got "
                      f"{ks[0]} and {keeps[0]}")
  for name, v in (("stage_k", ks), ("stage_keep", keeps)):
    if any(b < 1 or b > a for a, b in zip(v, v[1:])):
      raise ConfigError(f"drnas.{name} {list(v)} must not grow from stage to stage (>= 1)")
  if any(k < 2 or m.C % k for k in ks):
    raise ConfigError(f"drnas.stage_k {list(ks)}: each must be >= 2 (partial channels) and "
                      f"divide model.C={m.C}")
  if s.selection != "argmax" or s.ada or s.early_stop:
    raise ConfigError("drnas.stage_epochs (progressive learning) takes the argmax selection, "
                      "without search.ada or search.early_stop")
  if config.latency.objective != "none":
    raise ConfigError("drnas.stage_epochs (progressive learning) does not take a latency "
                      "objective: the expected latency does not see the pruned ops")
  if config.checkpoint.keep < 2:
    raise ConfigError(f"drnas.stage_epochs (progressive learning) needs checkpoint.keep >= 2 "
                      f"(the stage's end is rewritten), got {config.checkpoint.keep}")


def stage_config(config, meta: dict | None):
  """`config` as the progressive stage of a run whose latest checkpoint meta is `meta`
  (None: a fresh run) sees it: that stage's partial channels and op mask; `config`
  itself without stages."""
  d = config.get("drnas")
  if d is None or not d.stage_epochs or not meta or "drnas_stage" not in meta:
    return config
  stage = meta["drnas_stage"]
  c = config.copy_and_resolve_references()
  c.model.pc_k = int(d.stage_k[stage["stage"]])
  c.model.op_mask = stage["op_mask"]
  return c


def _stage(meta: dict | None) -> int:
  return meta["drnas_stage"]["stage"] if meta and "drnas_stage" in meta else 0


class StageHooks(SearchHooks):
  """DrNAS's progressive learning (the official DARTS-space train_search.py): the search
  runs once per stage (`drnas.stage_epochs`); between two stages each edge is pruned to
  its `stage_keep` strongest ops and the partial channels widen to 1/`stage_k` (`widen`:
  weights, BatchNorm statistics and momentum), the architecture optimiser and the
  learning-rate schedule going on."""

  def run_config(self, config, meta):
    return stage_config(config, meta)

  def epochs(self, config, meta):
    stages, stage = tuple(config.drnas.stage_epochs), _stage(meta)
    return int(sum(stages[:stage])), int(sum(stages[:stage + 1]))

  def check_restored(self, run, latest, found):
    newest = _stage(latest)
    if newest and (found is None or _stage(found) != newest):
      # The stage's supernet came from the newest meta; an older checkpoint of another
      # stage does not fit it (and starting afresh with it would be wrong).
      raise ConfigError(
          f"{run.ckpt_dir}: the newest checkpoint (DrNAS stage {newest}) is unreadable and "
          f"the ones before are of another stage; delete the unreadable ones to go on from "
          f"an earlier one")

  def after_run(self, run: SearchRun, state, meta):
    """The step to the next stage when this run ended its stage: the stage's last
    checkpoint is replaced by the pruned and widened state, its meta naming the new
    stage and mask. A kill in between leaves an earlier checkpoint the latest, and the
    resumed run redoes the stage's end the same way."""
    config = run.user_config
    d, stage = config.drnas, _stage(meta) + 1
    _, end = self.epochs(config, meta)
    if end >= config.search.epochs or meta["epoch"] != end or meta.get("stopped"):
      return False
    host = parallel.gather(state)
    old_mask = run.model.op_mask or {}
    groups = run.space.alpha_groups(host.alphas, run.model)
    pruned, mask = {}, {}
    for group, (logits, _) in groups.items():
      old = old_mask.get(group)
      pruned[group], mask[group] = prune(logits, int(d.stage_keep[stage]),
                                         None if old is None else np.asarray(old, bool))
    meta = dict(meta, drnas_stage=dict(stage=stage, op_mask={k: v.tolist()
                                                             for k, v in mask.items()}))
    c = stage_config(config, meta)
    fresh = run.fresh_state(c)
    seed = config.seed * 1000 + stage
    widened = host._replace(
        params=widen(host.params, fresh.params, seed),
        batch_stats=widen(host.batch_stats, fresh.batch_stats, seed, host.params),
        w_opt_state=widen(host.w_opt_state, fresh.w_opt_state, seed),
        alphas=run.space.with_op_logits(host.alphas, pruned, run.model))
    step = int(host.step)
    widened = parallel.put_state(widened, parallel.state_shardings(fresh, run.mesh))
    ckpt = Checkpointer(run.ckpt_dir, keep=config.checkpoint.keep)
    ckpt.delete_from(step)
    ckpt.save(step, widened, meta)
    ckpt.close()
    tqdm.tqdm.write(f"DrNAS: stage {stage}: {d.stage_keep[stage]} ops left per edge, "
                    f"partial channels 1/{d.stage_k[stage]}")
    return True
