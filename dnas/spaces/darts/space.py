"""The DARTS space behind `config.space = "darts"` (the search-space protocol,
`dnas.spaces.base`): the supernet of its section `model` (DARTS; PC-DARTS with
`model.partial_channels` and `model.edge_normalization`), Genotypes, NetworkCIFAR /
NetworkImageNet of `config.train`, cell drawings, and latency over the final network's
ops."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.errors import ConfigError, flatten, positive
from dnas import parallel
from dnas.arch import masked_logits, op_weights
from dnas.spaces.darts import draw, genotypes, latency
from dnas.spaces.darts.final import NETWORKS
from dnas.spaces.darts.ops import PRIMITIVES
from dnas.spaces.darts.search import Network

_CELLS = ("normal", "reduce")


def _op_mask(model) -> dict | None:
  """{"normal": bool[E, K], "reduce": bool[E, K]} of `model.op_mask` (DrNAS's stages)."""
  mask = model.get("op_mask")
  return None if mask is None else {k: np.asarray(mask[k], bool) for k in _CELLS}


def _get(alphas, key):
  return np.asarray(alphas[key].get_value()) if key in alphas else None


class DartsSpace:
  """The DARTS cell space (Liu et al., ICLR 2019); see the module docstring."""

  name = "darts"
  published = genotypes.GENOTYPES
  partial_channels = True  # PC-DARTS, DrNAS's partial channels

  def validate(self, model, train) -> None:
    flat = flatten({"model": model, "train": train})
    for k in ("model.C", "model.layers", "model.steps", "model.multiplier",
              "model.stem_multiplier", "train.C", "train.layers"):
      positive(flat, k, int)
    m = model
    if m.relaxation == "binary":
      raise ConfigError("method proxyless's binary gates run in the mobile space only "
                        "(config.space = 'mobile'), not the darts space")
    bad = [p for p in m.primitives if p not in PRIMITIVES]
    if bad:
      raise ConfigError(f"model.primitives: unknown op {bad[0]!r}; valid ops: "
                        f"{', '.join(PRIMITIVES)}")
    if m.multiplier > m.steps:
      raise ConfigError(f"model.multiplier ({m.multiplier}) must be <= model.steps "
                        f"({m.steps})")
    if m.partial_channels:
      positive(flat, "model.pc_k", int)
    if m.partial_channels and m.C % m.pc_k:
      raise ConfigError(f"model.pc_k={m.pc_k} must divide model.C={m.C}: each edge mixes "
                        f"C / pc_k channels")
    mask = _op_mask(model)
    if mask is not None:
      shape = (sum(i + 2 for i in range(m.steps)), len(m.primitives))
      for k, v in mask.items():
        if v.shape != shape or not v.any(axis=-1).all():
          raise ConfigError(f"model.op_mask[{k!r}] must be {shape[0]} x {shape[1]} booleans "
                            f"(edges x model.primitives) with an op left on every edge, got "
                            f"shape {v.shape}")
    if train.network not in NETWORKS:
      raise ConfigError(f"train.network {train.network!r} is unknown; valid: "
                        f"{', '.join(NETWORKS)}")

  def supernet(self, model, info, rngs: nnx.Rngs) -> Network:
    """DARTS, or PC-DARTS (partial channels K = `model.pc_k`, edge normalisation), or any
    method with partial channels only (`model.partial_channels`)."""
    m = model
    return Network(m.C, info.num_classes, m.layers, m.steps, m.multiplier, m.stem_multiplier,
                   in_channels=info.image_shape[-1], primitives=tuple(m.primitives),
                   partial_channels=m.pc_k if m.partial_channels else 1,
                   edge_normalization=m.edge_normalization, relaxation=m.relaxation,
                   gumbel_hard=m.gumbel_hard, auxiliary_skip=m.auxiliary_skip, remat=m.remat,
                   op_mask=_op_mask(m), scan_edges=m.scan_edges, rngs=rngs)

  def derive(self, alphas, model) -> genotypes.Genotype:
    """DARTS Sec. 2.4 (PC-DARTS's edge logits take part when present)."""
    m, mask = model, _op_mask(model) or {}
    return genotypes.derive_genotype(
        masked_logits(_get(alphas, "alphas_normal"), mask.get("normal")),
        masked_logits(_get(alphas, "alphas_reduce"), mask.get("reduce")), steps=m.steps,
        multiplier=m.multiplier, primitives=tuple(m.primitives),
        betas_normal=_get(alphas, "betas_normal"), betas_reduce=_get(alphas, "betas_reduce"),
        weights="sigmoid" if m.relaxation == "sigmoid" else "softmax")

  def alpha_groups(self, alphas, model):
    ops, mask = tuple(model.primitives), _op_mask(model) or {}
    return {kind: (masked_logits(_get(alphas, f"alphas_{kind}"), mask.get(kind)), ops)
            for kind in ("normal", "reduce")}

  def with_op_logits(self, alphas, groups: dict, model):
    """`alphas` with the op logits of the groups in `groups` ({"normal": f32[E, K], ...},
    as `alpha_groups` names them) replaced."""
    del model
    return jax.tree_util.tree_map_with_path(
        lambda p, x: next((groups[k] for k in groups
                           if f"alphas_{k}" in jax.tree_util.keystr(p)), x), alphas)

  def arch_metrics(self, arch: genotypes.Genotype, model, alphas=None) -> dict:
    """The derived cells' parameter-free ops (skip connections, pooling; of 2 * steps
    each): what DARTS's collapse piles up. FairDARTS (with `alphas`): how many chosen ops
    have a sigmoid weight below `fair_darts.threshold` (its rule would drop them)."""
    free = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")
    out = {f"param_free_ops_{cell}": sum(op in free for op, _ in getattr(arch, cell))
           for cell in ("normal", "reduce")}
    if model is not None and model.get("fair_threshold") is not None and alphas is not None:
      ops = tuple(model.primitives)
      starts = np.cumsum([0] + [i + 2 for i in range(model.steps)])
      below = 0
      for cell in ("normal", "reduce"):
        sig = 1 / (1 + np.exp(-np.asarray(_get(alphas, f"alphas_{cell}"), np.float64)))
        for k, (op, j) in enumerate(getattr(arch, cell)):
          below += sig[starts[k // 2] + j, ops.index(op)] < model.fair_threshold
      out["fair_below_threshold"] = int(below)
    return out

  def pt_select(self, ctx) -> genotypes.Genotype:
    """DARTS-PT's projection on the DARTS space (ruocwang/darts-pt, `sota/cnn/
    projection.py`, `--edge_decision random --proj_crit acc`). The op weights are the
    method's (softmax(alpha) for DARTS) with the decisions made so far imposed: a decided
    edge one-hot, a decided node's other input edges zero. First E decisions of an op
    (one edge of each cell type, drawn at random among the undecided): each op's weight
    zeroed in turn (not renormalised), the supernet's validation accuracy measured, the op
    whose removal hurts it most kept. Then one decision per node (a random undecided one,
    each cell type): its input edges' weights zeroed one at a time and the edge whose
    removal leaves the highest accuracy dropped, until two remain. `darts_pt.interval`
    epochs of weight fine-tuning with the projected weights between two decisions (the
    official: 5). Deviation as on NAS-Bench-201: the alphas stay fixed while fine-tuning.
    The Genotype is DARTS's parse of the projected weights (the official `genotype()`)."""
    config, state, m = ctx.config, ctx.state, ctx.model
    ops = tuple(m.primitives)
    alphas = parallel.to_host(state.alphas)
    kind = m.relaxation
    base = {c: np.asarray(op_weights(jnp.asarray(_get(alphas, f"alphas_{c}")), kind),
                          np.float32) for c in _CELLS}
    starts = np.cumsum([0] + [i + 2 for i in range(m.steps)])
    node_edges = [list(range(starts[i], starts[i + 1])) for i in range(m.steps)]
    n_edges = int(starts[-1])
    op_of = {c: {} for c in _CELLS}  # edge -> its op
    kept = {c: {} for c in _CELLS}  # node -> its two input edges

    def projected(c):
      w = base[c].copy()
      for e, k in op_of[c].items():
        w[e] = np.eye(len(ops), dtype=np.float32)[k]
      for i, keep in kept[c].items():
        w[[e for e in node_edges[i] if e not in keep]] = 0.0
      return w

    def inputs(changed=None):
      ws = {c: projected(c) for c in _CELLS}
      ws.update(changed or {})
      return {"weights": {c: jnp.asarray(w) for c, w in ws.items()}}

    def accuracy(c, w):
      return ctx.evaluate(state, inputs({c: w}))[1]

    rng = np.random.default_rng(config.seed)
    decisions, epoch = n_edges + m.steps, 0
    for t in range(decisions):
      for c in _CELLS:
        if t < n_edges:  # an op for one edge
          e = int(rng.choice([e for e in range(n_edges) if e not in op_of[c]]))
          accs = []
          for k in range(len(ops)):
            w = projected(c)
            w[e, k] = 0.0
            accs.append(accuracy(c, w))
          op_of[c][e] = int(np.argmin(accs))  # the first minimum (official: strict <)
          i = int(np.searchsorted(starts, e, side="right") - 1)
          print(f"DARTS-PT: {c} edge {e - starts[i]}->{i + 2}: {ops[op_of[c][e]]} (accuracy "
                f"without each op: {', '.join(f'{a:.3f}' for a in accs)})", flush=True)
        else:  # the two inputs of one node
          i = int(rng.choice([i for i in range(m.steps) if i not in kept[c]]))
          keep = list(node_edges[i])
          while len(keep) > 2:
            accs = []
            for e in keep:
              w = projected(c)
              w[e] = 0.0
              accs.append(accuracy(c, w))
            # The least needed edge: the highest accuracy without it (ties: the last,
            # as the official `crit >= extremum` scan).
            keep.pop(len(accs) - 1 - int(np.argmax(accs[::-1])))
          kept[c][i] = keep
          print(f"DARTS-PT: {c} node {i + 2} keeps inputs "
                f"{', '.join(str(e - starts[i]) for e in keep)}", flush=True)
      if t < decisions - 1:
        for _ in range(config.darts_pt.interval):
          state = ctx.train(state, ctx.weight_batches(epoch), inputs())
          epoch += 1
    concat = tuple(range(2 + m.steps - m.multiplier, m.steps + 2))
    return genotypes.Genotype(
        normal=genotypes.parse_weights(projected("normal"), m.steps, ops), normal_concat=concat,
        reduce=genotypes.parse_weights(projected("reduce"), m.steps, ops), reduce_concat=concat)

  def to_dict(self, arch: genotypes.Genotype) -> dict:
    return arch.to_dict()

  def from_dict(self, d) -> genotypes.Genotype:
    return genotypes.Genotype.from_dict(d)

  def final(self, arch, model, train, info, rngs: nnx.Rngs):
    del model  # the final network is the genotype's, at `train`'s size
    t = train
    return NETWORKS[t.network](arch, t.C, info.num_classes, t.layers, t.auxiliary,
                               t.drop_path_prob, in_channels=info.image_shape[-1], rngs=rngs)

  def final_apply(self, net, x, *, key=None, drop_path_prob=None):
    return net(x, key=key, drop_path_prob=drop_path_prob)

  def draw(self, arch, path_prefix: str) -> list[str]:
    return draw.plot_genotype(arch, path_prefix)

  # Latency over the final network's ops (`dnas.spaces.darts.latency`, on `dnas.latency`).

  def latency_profile(self, model, train, info, *, batch_size: int, dtype: str,
                      repeats: int, seed: int = 0, progress=None, runtime: str = "jax"):
    """A latency table of every op and fixed part of the final network, measured here."""
    del seed  # every op is timed: nothing is drawn
    _jax_only(runtime)
    return latency.profile(latency.layout_for(model, train, info), tuple(model.primitives),
                           batch_size=batch_size, dtype=dtype, repeats=repeats,
                           progress=progress)

  def latency_model(self, table, model, train, info) -> latency.DartsLatency:
    return latency.DartsLatency(table, latency.layout_for(model, train, info),
                                tuple(model.primitives))

  def random_arch(self, rng: np.random.Generator, model, info=None) -> genotypes.Genotype:
    """A uniformly drawn cell pair of the section's space (no `none` ops)."""
    del info  # the cells' choices do not depend on the data
    m = model
    return latency.random_genotype(rng, tuple(m.primitives), m.steps, m.multiplier)

  def compile_final(self, arch, model, train, info, *, batch_size: int, dtype: str,
                    runtime: str = "jax"):
    """(forward, args): the compiled final network in eval mode and random inputs."""
    _jax_only(runtime)
    return latency.compile_network(latency.layout_for(model, train, info), arch,
                                   batch_size=batch_size, dtype=dtype)


def _jax_only(runtime: str) -> None:
  if runtime != "jax":
    raise latency.LatencyError(
        f"the darts space's latency table is measured in jax only, not {runtime}; tables in "
        f"other runtimes are built for MixedOp spaces (mobile, nb201, your own model)")


SPACE = DartsSpace()
