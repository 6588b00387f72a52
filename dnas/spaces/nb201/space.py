"""The NAS-Bench-201 space behind `config.space = "nb201"` (the search-space protocol,
`dnas.spaces.base`): the supernet of its section `model` (`config.model` and
`config.nb201`; DARTS's softmax mixture, or GDAS with `search.relaxation=gumbel`,
`search.gumbel_hard=true`), architectures as the benchmark's
strings (`{"arch": "|op~0|+..."}` in genotype.json), and the `TinyNetwork` of
`config.train` that `dnas.train` retrains."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.errors import ConfigError, flatten, positive
from dnas.arch import op_weights
from dnas.deploy import runtimes
from dnas.latency.table import compile_eval, jit_eval
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
  # Its latency model is fitted to many timed networks (minutes), not measured at the
  # start of a search: a latency objective or limit needs latency.table.
  latency_table_hint = ("a cell-model table: `python -m dnas.latency profile --config=dnas/"
                        "configs/nb201.py` measures this machine's, scripts/eagle_latency.py "
                        "fits one from measured networks")

  def validate(self, model, train) -> None:
    flat = flatten({"model": model, "train": train})
    for k in ("model.C", "model.N", "train.C", "train.N"):
      positive(flat, k, int)
    if model.relaxation == "binary":
      raise ConfigError("method proxyless's binary gates run in the mobile space only "
                        "(config.space = 'mobile'), not the nb201 space")
    bad = [p for p in model.primitives if p not in NAS_BENCH_201]
    if bad:
      raise ConfigError(f"model.primitives: unknown op {bad[0]!r}; valid ops: "
                        f"{', '.join(NAS_BENCH_201)}")
    path = model.get("benchmark", "")
    if path and not os.path.exists(path):
      raise ConfigError(f"nb201.benchmark: {path} does not exist (the NATS-Bench topology "
                        f"file NATS-tss-v1_0-3ffb9-*)")
    if path and importlib.util.find_spec("nats_bench") is None:
      raise ConfigError("nb201.benchmark needs the nats_bench package: pip install "
                        "'dnas[nats]'")
    if "latency_networks" in model:
      positive({"nb201.latency_networks": model.latency_networks}, "nb201.latency_networks",
               int)

  def supernet(self, model, info, rngs: nnx.Rngs) -> Network:
    m = model
    return Network(m.C, m.N, info.num_classes, in_channels=info.image_shape[-1],
                   primitives=tuple(m.primitives), affine=m.affine,
                   track_running_stats=m.track_running_stats, relaxation=m.relaxation,
                   gumbel_hard=m.gumbel_hard, remat=m.remat, rngs=rngs)

  def derive(self, alphas, model) -> Structure:
    """The reference's rule: each edge's argmax op."""
    return derive(np.asarray(alphas["alphas"].get_value()), tuple(model.primitives))

  def alpha_groups(self, alphas, model):
    return {"cell": (np.asarray(alphas["alphas"].get_value()), tuple(model.primitives))}

  def with_op_logits(self, alphas, groups: dict, model):
    """`alphas` with the cell's op logits replaced by `groups["cell"]` (f32[6, K])."""
    del model
    return jax.tree.map(lambda x: groups.get("cell", x), alphas)

  def arch_metrics(self, arch: Structure, model, alphas=None) -> dict:
    """Per-epoch facts about the derived architecture: its parameter-free ops and, with
    `nb201.benchmark`, its 200-epoch test accuracies (%) in NAS-Bench-201, as the
    reference's search scripts log them."""
    del alphas
    out = {"param_free_ops": arch.parameter_free_ops()}
    path = model.get("benchmark", "")
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
    config, state, model = ctx.config, ctx.state, ctx.model
    weights = np.asarray(op_weights(jnp.asarray(ctx.state.alphas["alphas"][...]),
                                    model.relaxation))
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
            f"{tuple(model.primitives)[decided[int(e)]]} (accuracy without each op: "
            f"{', '.join(f'{a:.3f}' for a in accs)})", flush=True)
      if t < len(order) - 1:
        for _ in range(config.darts_pt.interval):
          state = ctx.train(state, ctx.weight_batches(epoch),
                            {"weights": jnp.asarray(projected(), jnp.float32)})
          epoch += 1
    return derive(projected(), tuple(model.primitives))

  def candidates(self, model) -> list[Structure]:
    """Every cell over `model.primitives` (K^6; 15,625 with all five ops), in
    `Structure.index` order: what `search.selection=supernet` and `latency.limit_ms`
    choose among."""
    prims = tuple(model.primitives)
    every = (Structure.from_index(i) for i in range(len(NAS_BENCH_201) ** len(EDGES)))
    return [a for a in every if all(op in prims for op in a.ops)]

  def one_hot(self, arch: Structure, model) -> np.ndarray:
    """f32[6, K]: the supernet's `weights` input that makes it the network of `arch`."""
    return gt.one_hot([arch], tuple(model.primitives))[0]

  def log_prob(self, alphas, archs, model) -> np.ndarray:
    """f64[A]: each architecture's sum over edges of the log of its op's weight, the
    weights the method mixes with (softmax, sigmoid, the Dirichlet mean): the largest is
    the argmax derivation's architecture."""
    w = np.asarray(op_weights(jnp.asarray(alphas["alphas"].get_value()),
                              model.relaxation), np.float64)
    hot = gt.one_hot(archs, tuple(model.primitives))
    return np.einsum("aek,ek->a", hot, np.log(np.maximum(w, 1e-30)))

  def to_dict(self, arch: Structure) -> dict:
    return arch.to_dict()

  def from_dict(self, d) -> Structure:
    return Structure.from_dict(d)

  def final(self, arch, model, train, info, rngs: nnx.Rngs) -> TinyNetwork:
    del model  # the TinyNetwork of `arch`, at `train`'s size
    t = train
    return TinyNetwork(arch, t.C, t.N, info.num_classes, in_channels=info.image_shape[-1],
                       rngs=rngs)

  def final_apply(self, net, x, *, key=None, drop_path_prob=None):
    del key, drop_path_prob  # TinyNetwork has neither drop path nor an auxiliary head
    return net(x), None

  def draw(self, arch, path_prefix: str) -> list[str]:
    del arch, path_prefix  # the string is the picture
    return []

  def latency_profile(self, model, train, info, *, batch_size: int, dtype: str,
                      repeats: int, seed: int = 0, progress=None, runtime: str = "jax"):
    """A cell-model table of this machine (`dnas.spaces.nb201.latency.profile`): the
    TinyNetworks of `train` for `nb201.latency_networks` architectures of
    `model.primitives` drawn uniformly (from `seed`), timed here, and the model fitted
    to them."""
    rng = np.random.default_rng(seed)
    archs = [self.random_arch(rng, model) for _ in range(model.latency_networks)]
    table = latency.profile(
        lambda a: self.compile_final(a, model, train, info, batch_size=batch_size,
                                     dtype=dtype, runtime=runtime),
        archs, batch_size=batch_size, dtype=dtype, repeats=repeats, progress=progress)
    table.meta.update(runtimes.stamp(runtime), network="tiny", C=train.C, N=train.N, image=list(info.image_shape))
    return table

  def compile_final(self, arch, model, train, info, *, batch_size: int, dtype: str,
                    runtime: str = "jax"):
    """(forward, args): the compiled TinyNetwork of `train` in eval mode and random
    inputs."""
    if runtime != "jax":
      return compile_eval(self.final(arch, model, train, info, nnx.Rngs(0)), info.image_shape,
                          batch_size=batch_size, dtype=dtype, runtime=runtime,
                          apply=self.final_apply)
    jdtype = jnp.dtype(dtype)
    forward, state = jit_eval(self.final(arch, model, train, info, nnx.Rngs(0)), jdtype)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch_size,) + tuple(info.image_shape)), jdtype)
    compiled = forward.lower(state, x).compile()
    return (lambda state, x: compiled(state, x)), (state, x)

  def latency_model(self, table, model, train, info) -> CellLatency:
    """The cell model of `table` (`dnas.spaces.nb201.latency`): exact expected latency."""
    del train, info
    return CellLatency(table, tuple(model.primitives))

  def random_arch(self, rng: np.random.Generator, model, info=None) -> Structure:
    del info  # the cell's choices do not depend on the data
    return random_structure(rng, tuple(model.primitives))


@functools.cache
def _benchmark(path: str) -> Benchmark:
  return Benchmark(path)


SPACE = NB201Space()
