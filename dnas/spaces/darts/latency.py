"""DARTS final networks on a latency table: the ops and fixed parts at the shapes the
final network meets, measuring them, a genotype's predicted latency, and the supernet's
expected latency, differentiable in the architecture parameters (FBNet Eq. 4,
ProxylessNAS Eq. 5).

The table describes the network that will ship: the final network of the config
(`train.network`, `train.C`, `train.layers`; eval mode, no auxiliary head), not the
smaller supernet. Its cells share the supernet's alphas by type, so the expected
latency sums each edge's expected op latency over every final cell of that type.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import latency_lib
from dnas.arch import node_softmax
from dnas.latency_lib import LatencyTable, op_key
from dnas.spaces.darts import final
from dnas.spaces.darts.genotypes import Genotype
from dnas.spaces.darts.ops import FactorizedReduce, ReLUConvBN, batch_norm, conv2d, linear, make_op

def _half(hw):
  return tuple(math.ceil(v / 2) for v in hw)


@dataclasses.dataclass(frozen=True)
class CellShape:
  """One final cell: channels and the spatial sizes of its two inputs."""
  reduction: bool
  reduction_prev: bool
  C_prev_prev: int
  C_prev: int
  C: int
  hw0: tuple[int, int]  # of s0 (2x hw1 after a reduction cell)
  hw1: tuple[int, int]  # of s1, and of the preprocessed states 0 and 1

  @property
  def hw_out(self):
    return _half(self.hw1) if self.reduction else self.hw1

  def edge(self, node: int, j: int) -> tuple[tuple[int, int], int]:
    """(input spatial size, stride) of the edge from state j into intermediate `node`."""
    if self.reduction and j < 2:
      return self.hw1, 2
    return (self.hw1 if j < 2 else self.hw_out), 1


@dataclasses.dataclass(frozen=True)
class Layout:
  """The final network's shapes: stem, cells, classifier."""
  network: str
  image: tuple[int, int, int]
  C: int
  num_classes: int
  steps: int
  multiplier: int
  stem_multiplier: int
  cells: tuple[CellShape, ...]
  head_hw: tuple[int, int]
  head_C: int


def final_layout(network: str, C: int, layers: int, image: tuple[int, int, int],
                 num_classes: int, *, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3) -> Layout:
  """The shapes `NetworkCIFAR` / `NetworkImageNet` meet (same bookkeeping as `final`)."""
  if network not in final.NETWORKS:
    raise ValueError(f"network {network!r} is unknown; valid: {', '.join(final.NETWORKS)}")
  hw = tuple(image[:2])
  if network == "cifar":
    C_pp = C_p = stem_multiplier * C
    hw0 = hw1 = hw
    reduction_prev = False
  else:  # two stride-2 stems, then stride 2 again: s0 at H/4, s1 at H/8
    C_pp = C_p = C
    hw0 = _half(_half(hw))
    hw1 = _half(hw0)
    reduction_prev = True
  C_curr, cells = C, []
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      C_curr *= 2
    cell = CellShape(reduction, reduction_prev, C_pp, C_p, C_curr, hw0, hw1)
    cells.append(cell)
    reduction_prev = reduction
    C_pp, C_p = C_p, multiplier * C_curr
    hw0, hw1 = hw1, cell.hw_out
  return Layout(network, tuple(image), C, num_classes, steps, multiplier, stem_multiplier,
                tuple(cells), hw1, C_p)


def _fixed_keys(layout: Layout) -> list[str]:
  """Keys of everything that does not depend on the genotype."""
  h, w, c_in = layout.image
  stem_out = layout.stem_multiplier * layout.C if layout.network == "cifar" else layout.C
  keys = [op_key(f"stem_{layout.network}", h, w, c_in, stem_out, 1)]
  for cell in layout.cells:
    if cell.reduction_prev:
      keys.append(op_key("factorized_reduce", *cell.hw0, cell.C_prev_prev, cell.C, 2))
    else:
      keys.append(op_key("relu_conv_bn", *cell.hw0, cell.C_prev_prev, cell.C, 1))
    keys.append(op_key("relu_conv_bn", *cell.hw1, cell.C_prev, cell.C, 1))
    keys.append(op_key(f"cell_output_{layout.steps}_{layout.multiplier}", *cell.hw_out,
                       cell.C, layout.multiplier * cell.C, 1))
  keys.append(op_key("classifier", *layout.head_hw, layout.head_C, layout.num_classes, 1))
  return keys


def _op_key(cell: CellShape, name: str, node: int, j: int) -> str | None:
  if name == "none":
    return None
  hw, stride = cell.edge(node, j)
  return op_key(name, *hw, cell.C, cell.C, stride)


def table_keys(layout: Layout, primitives) -> list[str]:
  """Every key a prediction for `layout` over `primitives` can look up."""
  keys = _fixed_keys(layout)
  for cell in layout.cells:
    for node in range(layout.steps):
      for j in range(node + 2):
        keys += [k for k in (_op_key(cell, p, node, j) for p in primitives) if k]
  return list(dict.fromkeys(keys))


class _ImageNetStem(nnx.Module):
  """NetworkImageNet's stem0 and stem1 as one timed part: f[N, H, W, C] -> (s0, s1)."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
    self.stem0 = nnx.Sequential(conv2d(c_in, c_out // 2, 3, 2, 1, rngs=rngs),
                                batch_norm(c_out // 2, True, rngs), jax.nn.relu,
                                conv2d(c_out // 2, c_out, 3, 2, 1, rngs=rngs),
                                batch_norm(c_out, True, rngs))
    self.stem1 = nnx.Sequential(jax.nn.relu, conv2d(c_out, c_out, 3, 2, 1, rngs=rngs),
                                batch_norm(c_out, True, rngs))

  def __call__(self, x):
    s0 = self.stem0(x)
    return s0, self.stem1(s0)


class _Classifier(nnx.Module):
  """Global average pooling and the linear classifier: f[N, H, W, C] -> f[N, K]."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
    self.linear = linear(c_in, c_out, rngs=rngs)

  def __call__(self, x):
    return self.linear(jnp.mean(x, axis=(1, 2)))


def _module_for(key: str, rngs: nnx.Rngs):
  """(module or function, input shapes) measured under `key`."""
  name, shape, stride = key.split("|")
  hwc, c_out = shape.split("->")
  h, w, c_in = (int(v) for v in hwc.split("x"))
  c_out, stride = int(c_out), int(stride[1:])
  if name == "stem_cifar":
    return nnx.Sequential(conv2d(c_in, c_out, 3, 1, 1, rngs=rngs),
                          batch_norm(c_out, True, rngs)), [(h, w, c_in)]
  if name == "stem_imagenet":
    return _ImageNetStem(c_in, c_out, rngs), [(h, w, c_in)]
  if name == "factorized_reduce":
    return FactorizedReduce(c_in, c_out, rngs=rngs), [(h, w, c_in)]
  if name == "relu_conv_bn":
    return ReLUConvBN(c_in, c_out, 1, 1, 0, rngs=rngs), [(h, w, c_in)]
  if name.startswith("cell_output_"):
    steps, multiplier = (int(v) for v in name.split("_")[2:])

    def cell_output(*hs):  # node i = h_2i + h_2i+1; concat of the last `multiplier`
      nodes = [hs[2 * i] + hs[2 * i + 1] for i in range(steps)]
      return jnp.concatenate(nodes[-multiplier:], axis=-1)
    return cell_output, [(h, w, c_in)] * (2 * steps)
  if name == "classifier":
    return _Classifier(c_in, c_out, rngs), [(h, w, c_in)]
  return make_op(name, c_in, stride, True, rngs), [(h, w, c_in)]


def measure(key: str, batch_size: int, dtype, repeats: int, seed: int = 0) -> dict:
  """Compiles the module of `key` alone (eval mode) and times it on random inputs."""
  fn, shapes = _module_for(key, nnx.Rngs(seed))
  if isinstance(fn, nnx.Module):
    jitted, state = latency_lib.jit_eval(fn, dtype)
    args = (state,)
  else:
    jitted, args = jax.jit(fn), ()
  rng = np.random.default_rng(seed)
  xs = [jnp.asarray(rng.standard_normal((batch_size,) + s), dtype) for s in shapes]
  return latency_lib.time_call(jitted, *args, *xs, repeats=repeats)


def profile(layout: Layout, primitives, *, batch_size: int, dtype: str = "float32",
            repeats: int = 50, progress=None) -> LatencyTable:
  """Measures every key of `layout` over `primitives` on the current default device."""
  jdtype = jnp.dtype(dtype)
  keys = table_keys(layout, primitives)
  entries = {}
  for i, key in enumerate(keys):
    entries[key] = measure(key, batch_size, jdtype, repeats)
    if progress:
      progress(i + 1, len(keys), key, entries[key]["median"])
  meta = dict(latency_lib.device_stamp(), batch_size=batch_size, dtype=dtype, unit="ms",
              repeats=repeats, network=layout.network, image=list(layout.image),
              dispatch_ms=latency_lib.dispatch_ms((batch_size,) + layout.image, jdtype))
  return LatencyTable(meta, entries)


def _correction(table: LatencyTable) -> tuple[float, float]:
  """(scale, offset_ms) of a calibrated table; (1, 0) otherwise."""
  c = table.meta.get("correction", {})
  return float(c.get("scale", 1.0)), float(c.get("offset_ms", 0.0))


def _net(table: LatencyTable, key: str) -> float:
  """An entry without the call overhead that the whole network pays once, times the
  table's fitted scale (1 without a correction)."""
  return _correction(table)[0] * max(table.lookup(key) - table.dispatch_ms, 0.0)


def fixed_latency(table: LatencyTable, layout: Layout) -> float:
  """ms of the stem, preprocessing, cell outputs and classifier plus one dispatch (on a
  calibrated table: scaled, plus the fitted offset)."""
  scale, offset = _correction(table)
  return offset + scale * (table.dispatch_ms + sum(
      max(table.lookup(k) - table.dispatch_ms, 0.0) for k in _fixed_keys(layout)))


def predict(table: LatencyTable, layout: Layout, genotype: Genotype) -> float:
  """Predicted latency (ms) of the final network of `genotype`: the sum of its parts
  (on a calibrated table, scale * sum + offset)."""
  total = fixed_latency(table, layout)
  for cell in layout.cells:
    edges = genotype.reduce if cell.reduction else genotype.normal
    for e, (name, j) in enumerate(edges):
      key = _op_key(cell, name, e // 2, j)
      total += _net(table, key) if key else 0.0
  return total


def random_genotype(rng: np.random.Generator, primitives, steps: int = 4,
                    multiplier: int = 4) -> Genotype:
  """A uniformly drawn cell pair: per node two distinct inputs, each with a non-`none` op."""
  ops = [p for p in primitives if p != "none"]

  def cell():
    edges = []
    for i in range(steps):
      for j in sorted(rng.choice(i + 2, 2, replace=False)):
        edges.append((ops[rng.integers(len(ops))], int(j)))
    return edges
  concat = list(range(2 + steps - multiplier, steps + 2))
  return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


def calibrate(table: LatencyTable, layout: Layout, measured) -> LatencyTable:
  """The table with a fitted correction, measured ~ scale * (sum of parts) + offset, by
  least squares over `measured`, a list of (genotype, ms) end-to-end times of other
  networks. Whole compiled networks run faster than the sum of their separately timed
  parts (XLA fuses across op boundaries and runs independent kernels side by side; on
  this 2-core CPU about 2x). One scale and one offset keep the table's ranking, which
  the raw sums already get right, and extrapolate to networks unlike the calibration
  set; a scale per kind of op overfitted the timing noise (BUILD_NOTES.md). The model
  stays linear in the op latencies, so the expected latency stays differentiable."""
  raw = LatencyTable({k: v for k, v in table.meta.items() if k != "correction"},
                     table.entries)
  x = np.array([predict(raw, layout, g) for g, _ in measured])
  y = np.array([ms for _, ms in measured])
  (scale, offset), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
  if scale <= 0:
    raise latency_lib.LatencyError(f"calibration found no positive relation between the "
                                   f"table's sums and {len(y)} measured networks")
  fit = scale * x + offset
  correction = dict(scale=round(float(scale), 6), offset_ms=round(float(offset), 6),
                    networks=len(measured),
                    fit_mape_pct=round(float(100 * np.mean(np.abs(fit - y) / y)), 3),
                    layout=dict(network=layout.network, C=layout.C, layers=len(layout.cells),
                                image=list(layout.image)))
  return LatencyTable(dict(raw.meta, correction=correction), table.entries)


def op_latency_matrices(table: LatencyTable, layout: Layout, primitives):
  """(normal, reduce) f64[E, K]: per supernet edge and op, the summed latency (ms) of
  that op on that edge over all final cells of the type; `none` costs 0."""
  E = sum(i + 2 for i in range(layout.steps))
  mats = {False: np.zeros((E, len(primitives))), True: np.zeros((E, len(primitives)))}
  for cell in layout.cells:
    e = 0
    for node in range(layout.steps):
      for j in range(node + 2):
        for k, name in enumerate(primitives):
          key = _op_key(cell, name, node, j)
          mats[cell.reduction][e, k] += _net(table, key) if key else 0.0
        e += 1
  return mats[False], mats[True]


@dataclasses.dataclass(frozen=True)
class ExpectedLatency:
  """E[LAT](alphas) in ms, differentiable (FBNet Eq. 4, ProxylessNAS Eq. 5, on the DARTS
  cell): fixed + sum over cell types, edges e and ops k != none of
  w_e * p'_{e,k} * LAT_{e,k}.

  p' is softmax(alpha) over the non-`none` ops: the discretizer never keeps `none`, so
  probability on it would lower the estimate without making the derived network faster.
  w_e is edge e's share of the two edges the derived cell keeps per node (the weights of
  a node's inputs sum to 2): 2 / (inputs of its node) under DARTS, 2 * node_softmax(beta)_e
  with PC-DARTS's edge logits.
  """
  fixed: float
  normal: np.ndarray  # f64[E, K]
  reduce: np.ndarray
  steps: int
  primitives: tuple[str, ...]

  @classmethod
  def build(cls, table: LatencyTable, layout: Layout, primitives) -> "ExpectedLatency":
    normal, reduce = op_latency_matrices(table, layout, primitives)  # corrected by _net
    return cls(fixed_latency(table, layout), normal, reduce, layout.steps, tuple(primitives))

  def __call__(self, alphas_normal, alphas_reduce, betas_normal=None, betas_reduce=None):
    """f32[E, K] logits (and optional f32[E] edge logits) -> f32[] ms."""
    keep = np.array([n != "none" for n in self.primitives])
    uniform = jnp.asarray(np.concatenate([np.full(i + 2, 2.0 / (i + 2))
                                          for i in range(self.steps)]), jnp.float32)
    total = jnp.asarray(self.fixed, jnp.float32)
    for a, b, lat in ((alphas_normal, betas_normal, self.normal),
                      (alphas_reduce, betas_reduce, self.reduce)):
      p = jax.nn.softmax(jnp.where(keep, a, -jnp.inf), axis=-1)
      w = uniform if b is None else 2.0 * node_softmax(b, self.steps)
      total = total + jnp.sum(w[:, None] * p * jnp.asarray(lat, jnp.float32))
    return total

  def of_state(self, alphas) -> jax.Array:
    """E[LAT] of an ArchParam state of `darts.Network` (with PC-DARTS betas if present)."""
    get = lambda k: alphas[k].get_value() if k in alphas else None
    return self(get("alphas_normal"), get("alphas_reduce"), get("betas_normal"),
                get("betas_reduce"))

  def minimum(self) -> float:
    """A lower bound of the expected latency (and of every derived network's): per node,
    twice the cheapest non-`none` op on its cheapest edge, since each node's edge weights
    sum to 2. The objectives are checked against it."""
    keep = np.array([n != "none" for n in self.primitives])
    total = self.fixed
    for lat in (self.normal, self.reduce):
      start = 0
      for i in range(self.steps):
        total += 2 * lat[start:start + i + 2][:, keep].min()
        start += i + 2
    return float(total)


def layout_for(config, info) -> Layout:
  """The layout of the final network that `config` retrains (`train.*`) on data `info`."""
  t, m = config.train, config.model
  return final_layout(t.network, t.C, t.layers, tuple(info.image_shape), info.num_classes,
                      steps=m.steps, multiplier=m.multiplier, stem_multiplier=3)


def compile_network(layout: Layout, genotype: Genotype, *, batch_size: int,
                    dtype: str = "float32", seed: int = 0):
  """(forward, args): the compiled final network of `genotype` in eval mode and random
  inputs for it; `forward(*args)` is what `measure_network` times."""
  h, w, c = layout.image
  kwargs = dict(in_channels=c, rngs=nnx.Rngs(seed))
  if layout.network == "cifar":
    net = final.NetworkCIFAR(genotype, layout.C, layout.num_classes, len(layout.cells),
                             stem_multiplier=layout.stem_multiplier, **kwargs)
  else:
    net = final.NetworkImageNet(genotype, layout.C, layout.num_classes, len(layout.cells),
                                **kwargs)
  jdtype = jnp.dtype(dtype)
  forward, state = latency_lib.jit_eval(net, jdtype)
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((batch_size, h, w, c)), jdtype)
  compiled = forward.lower(state, x).compile()
  return (lambda state, x: compiled(state, x)[0]), (state, x)


def measure_network(layout: Layout, genotype: Genotype, *, batch_size: int,
                    dtype: str = "float32", repeats: int = 50, seed: int = 0) -> dict:
  """End-to-end latency (ms; median and quartiles) of the compiled final network of
  `genotype` in eval mode on random inputs: what `predict` estimates."""
  forward, args = compile_network(layout, genotype, batch_size=batch_size, dtype=dtype,
                                  seed=seed)
  return latency_lib.time_call(forward, *args, repeats=repeats)
