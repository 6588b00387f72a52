"""The NAS-Bench-201 space behind `config.space = "nb201"` (the search-space protocol,
`dnas.spaces.base`): the supernet of `config.model` (DARTS's softmax mixture, or GDAS with
`search.relaxation=gumbel`, `search.gumbel_hard=true`), architectures as the benchmark's
strings (`{"arch": "|op~0|+..."}` in genotype.json), and the `TinyNetwork` of
`config.train` that `dnas.train` retrains."""

import functools
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.errors import ConfigError, flatten, positive
from dnas.arch import op_weights
from dnas.relaxation import relaxation_kind
from dnas.latency.table import jit_eval
from dnas.spaces.nb201 import ground_truth as gt
from dnas.spaces.nb201.benchmark import Benchmark
from dnas.spaces.nb201 import latency
from dnas.spaces.nb201.latency import CellLatency
from dnas.spaces.nb201.network import Network, TinyNetwork
from dnas.spaces.nb201.ops import NAS_BENCH_201
from dnas.spaces.nb201.structure import EDGES, Structure, derive, random_structure


class NB201Space:
  """NAS-Bench-201 (Dong & Yang, ICLR 2020); see the module docstring."""

  name = "nb201"
  published: dict = {}
  partial_channels = False  # PC-DARTS's partial channels and edge weights: DARTS's supernet

  def validate(self, config) -> None:
    flat = flatten(config)
    for k in ("model.C", "model.N", "train.C", "train.N"):
      positive(flat, k, int)
    bad = [p for p in config.model.primitives if p not in NAS_BENCH_201]
    if bad:
      raise ConfigError(f"model.primitives: unknown op {bad[0]!r}; valid ops: "
                        f"{', '.join(NAS_BENCH_201)}")
    path = _benchmark_path(config)
    if path and not os.path.exists(path):
      raise ConfigError(f"nb201.benchmark: {path} does not exist (the NATS-Bench topology "
                        f"file NATS-tss-v1_0-3ffb9-*)")
    if path and importlib.util.find_spec("nats_bench") is None:
      raise ConfigError("nb201.benchmark needs the nats_bench package: pip install "
                        "'dnas[nats]'")
    if (config.latency.objective != "none" or config.latency.limit_ms > 0) and \
        not config.latency.table:
      raise ConfigError("space nb201 takes its latency from latency.table, a cell-model "
                        "table: `python -m dnas.latency profile --config=dnas/configs/"
                        "nb201.py` measures this machine's, scripts/eagle_latency.py fits "
                        "one from measured networks")
    if "nb201" in config:
      positive(flat, "nb201.latency_networks", int)

  def supernet(self, config, info, rngs: nnx.Rngs) -> Network:
    m, s = config.model, config.search
    return Network(m.C, m.N, info.num_classes, in_channels=info.image_shape[-1],
                   primitives=tuple(m.primitives), affine=m.affine,
                   track_running_stats=m.track_running_stats, relaxation=relaxation_kind(config),
                   gumbel_hard=s.gumbel_hard, remat=m.remat, rngs=rngs)

  def derive(self, alphas, config) -> Structure:
    """The reference's rule: each edge's argmax op."""
    return derive(np.asarray(alphas["alphas"].get_value()), tuple(config.model.primitives))

  def alpha_groups(self, alphas, config):
    return {"cell": (np.asarray(alphas["alphas"].get_value()), tuple(config.model.primitives))}

  def arch_metrics(self, arch: Structure, config, alphas=None) -> dict:
    """Per-epoch facts about the derived architecture: its parameter-free ops and, with
    `nb201.benchmark`, its 200-epoch test accuracies (%) in NAS-Bench-201, as the
    reference's search scripts log them."""
    del alphas
    out = {"param_free_ops": arch.parameter_free_ops()}
    path = _benchmark_path(config)
    if path:
      out.update({f"nb201_{k}_test_acc": v for k, v in _benchmark(path).query(arch).items()})
    return out

  def pt_select(self, ctx) -> Structure:
    """DARTS-PT's projection (ruocwang/darts-pt, `nasbench201/projection.py`): the op
    weights are the method's (softmax(alpha) for DARTS) with the decided edges one-hot; the edges are decided in
    a random order (seeded by `config.seed`); for an edge, each op's weight is zeroed in
    turn (the others unchanged, not renormalised) and the supernet's validation accuracy
    measured; the op whose removal hurts it most is kept (the edge becomes one-hot); the
    weights are fine-tuned `darts_pt.interval` epochs between decisions with the
    projected op weights. Deviation: the alphas stay fixed while fine-tuning (the
    official code keeps stepping them, which moves only the undecided edges)."""
    config, state = ctx.config, ctx.state
    weights = np.asarray(op_weights(jnp.asarray(ctx.state.alphas["alphas"][...]),
                                    relaxation_kind(config)))
    decided: dict[int, int] = {}

    def projected():
      w = weights.copy()
      for e, k in decided.items():
        w[e] = np.eye(w.shape[1])[k]
      return w
    order = np.random.default_rng(config.seed).permutation(len(EDGES))
    epoch = 0
    for t, e in enumerate(order):
      accs = []
      for k in range(weights.shape[1]):
        w = projected()
        w[e, k] = 0.0
        accs.append(ctx.evaluate(state, {"weights": jnp.asarray(w, jnp.float32)})[1])
      decided[int(e)] = int(np.argmin(accs))  # the op whose removal hurts most
      print(f"DARTS-PT: edge {EDGES[e][1]}->{EDGES[e][0]}: "
            f"{tuple(config.model.primitives)[decided[int(e)]]} (accuracy without each op: "
            f"{', '.join(f'{a:.3f}' for a in accs)})", flush=True)
      if t < len(order) - 1:
        for _ in range(config.darts_pt.interval):
          state = ctx.train(state, ctx.weight_batches(epoch),
                            {"weights": jnp.asarray(projected(), jnp.float32)})
          epoch += 1
    return derive(projected(), tuple(config.model.primitives))

  def candidates(self, config) -> list[Structure]:
    """Every cell over `config.model.primitives` (K^6; 15,625 with all five ops), in
    `Structure.index` order: what `search.selection=supernet` and `latency.limit_ms`
    choose among."""
    prims = tuple(config.model.primitives)
    every = (Structure.from_index(i) for i in range(len(NAS_BENCH_201) ** len(EDGES)))
    return [a for a in every if all(op in prims for op in a.ops)]

  def one_hot(self, arch: Structure, config) -> np.ndarray:
    """f32[6, K]: the supernet's `weights` input that makes it the network of `arch`."""
    return gt.one_hot([arch], tuple(config.model.primitives))[0]

  def log_prob(self, alphas, archs, config) -> np.ndarray:
    """f64[A]: each architecture's sum over edges of the log of its op's weight, the
    weights the method mixes with (softmax, sigmoid, the Dirichlet mean): the largest is
    the argmax derivation's architecture."""
    w = np.asarray(op_weights(jnp.asarray(alphas["alphas"].get_value()),
                              relaxation_kind(config)), np.float64)
    hot = gt.one_hot(archs, tuple(config.model.primitives))
    return np.einsum("aek,ek->a", hot, np.log(np.maximum(w, 1e-30)))

  def to_dict(self, arch: Structure) -> dict:
    return arch.to_dict()

  def from_dict(self, d) -> Structure:
    return Structure.from_dict(d)

  def final(self, arch, config, info, rngs: nnx.Rngs) -> TinyNetwork:
    t = config.train
    return TinyNetwork(arch, t.C, t.N, info.num_classes, in_channels=info.image_shape[-1],
                       rngs=rngs)

  def final_apply(self, net, x, *, key=None, drop_path_prob=None):
    del key, drop_path_prob  # TinyNetwork has neither drop path nor an auxiliary head
    return net(x), None

  def draw(self, arch, path_prefix: str) -> list[str]:
    del arch, path_prefix  # the string is the picture
    return []

  def latency_profile(self, config, info, *, batch_size: int, dtype: str, repeats: int,
                      progress=None):
    """A cell-model table of this machine (`dnas.spaces.nb201.latency.profile`): the
    TinyNetworks of `config.train` for `nb201.latency_networks` uniformly drawn
    architectures of `model.primitives`, timed here, and the model fitted to them."""
    rng = np.random.default_rng(config.seed)
    archs = [self.random_arch(rng, config) for _ in range(config.nb201.latency_networks)]
    table = latency.profile(
        lambda a: self.compile_final(a, config, info, batch_size=batch_size, dtype=dtype),
        archs, batch_size=batch_size, dtype=dtype, repeats=repeats, progress=progress)
    table.meta.update(network="tiny", C=config.train.C, N=config.train.N,
                      image=list(info.image_shape))
    return table

  def compile_final(self, arch, config, info, *, batch_size: int, dtype: str):
    """(forward, args): the compiled TinyNetwork of `config.train` in eval mode and random
    inputs."""
    jdtype = jnp.dtype(dtype)
    forward, state = jit_eval(self.final(arch, config, info, nnx.Rngs(0)), jdtype)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch_size,) + tuple(info.image_shape)), jdtype)
    compiled = forward.lower(state, x).compile()
    return (lambda state, x: compiled(state, x)), (state, x)

  def latency_model(self, table, config, info) -> CellLatency:
    """The cell model of `table` (`dnas.spaces.nb201.latency`): exact expected latency."""
    del info
    return CellLatency(table, tuple(config.model.primitives))

  def random_arch(self, rng: np.random.Generator, config) -> Structure:
    return random_structure(rng, tuple(config.model.primitives))


def _benchmark_path(config) -> str:
  return config.nb201.benchmark if "nb201" in config else ""


@functools.cache
def _benchmark(path: str) -> Benchmark:
  return Benchmark(path)


SPACE = NB201Space()
