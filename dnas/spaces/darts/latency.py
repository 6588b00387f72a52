"""DARTS final networks on a latency table: the ops and fixed parts at the shapes the
final network meets (traced from it, `dnas.latency.trace`), measuring them, a genotype's
predicted latency, and the supernet's expected latency (`dnas.latency.ExpectedLatency`),
differentiable in the architecture parameters (FBNet Eq. 4, ProxylessNAS Eq. 5).

The table describes the network that will ship: the final network of the config
(`train.network`, `train.C`, `train.layers`; eval mode, no auxiliary head), not the
smaller supernet. Its cells share the supernet's alphas by type, so the expected
latency sums each edge's expected op latency over every final cell of that type.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.arch import node_softmax
from dnas.latency import (ExpectedLatency, LatencyError, LatencyTable, device_stamp, dispatch_ms,
                          jit_eval, op_key, time_call, trace)
from dnas.spaces.darts import final
from dnas.spaces.darts.genotypes import Genotype
from dnas.spaces.darts.ops import FactorizedReduce, ReLUConvBN, batch_norm, conv2d, linear, make_op

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
  hw_out: tuple[int, int]  # of the intermediate nodes and the cell's output

  def edge(self, node: int, j: int) -> tuple[tuple[int, int], int]:
    """(input spatial size, stride) of the edge from state j into intermediate `node`:
    the preprocessed inputs (j < 2) are at hw1, strided in a reduction cell; nodes at
    hw_out."""
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
  stem_out: int
  cells: tuple[CellShape, ...]
  head_hw: tuple[int, int]
  head_C: int


def trace_layout(net: nnx.Module, image: tuple[int, int, int]) -> Layout:
  """The shapes a final network (`NetworkCIFAR` or `NetworkImageNet`, possibly abstract
  from `nnx.eval_shape`) meets on f32[1, *image], from tracing its forward in eval mode:
  each cell's inputs and output, and the logits."""
  net = nnx.clone(net)
  net.eval()
  calls, out = trace.calls(net, jax.ShapeDtypeStruct((1,) + tuple(image), jnp.float32),
                           types=(final.Cell,))
  cells = []
  for c in calls:
    s0, s1 = c.inputs[:2]
    cells.append(CellShape(c.module.reduction, isinstance(c.module.preprocess0, FactorizedReduce),
                           s0.shape[-1], s1.shape[-1], c.output.shape[-1] // c.module.multiplier,
                           tuple(s0.shape[1:3]), tuple(s1.shape[1:3]),
                           tuple(c.output.shape[1:3])))
  first, last = calls[0], calls[-1]
  return Layout(network="cifar" if isinstance(net, final.NetworkCIFAR) else "imagenet",
                image=tuple(image), C=cells[0].C // (2 if cells[0].reduction else 1),
                num_classes=out[0].shape[-1], steps=len(first.module.ops) // 2,
                multiplier=first.module.multiplier, stem_out=first.inputs[0].shape[-1],
                cells=tuple(cells), head_hw=tuple(last.output.shape[1:3]),
                head_C=last.output.shape[-1])


def _fixed_keys(layout: Layout) -> list[str]:
  """Keys of everything that does not depend on the genotype."""
  keys = [op_key(f"stem_{layout.network}", layout.image, layout.stem_out)]
  for cell in layout.cells:
    if cell.reduction_prev:
      keys.append(op_key("factorized_reduce", (*cell.hw0, cell.C_prev_prev), cell.C, 2))
    else:
      keys.append(op_key("relu_conv_bn", (*cell.hw0, cell.C_prev_prev), cell.C))
    keys.append(op_key("relu_conv_bn", (*cell.hw1, cell.C_prev), cell.C))
    keys.append(op_key(f"cell_output_{layout.steps}_{layout.multiplier}",
                       (*cell.hw_out, cell.C), layout.multiplier * cell.C))
  keys.append(op_key("classifier", (*layout.head_hw, layout.head_C), layout.num_classes))
  return keys


def _op_key(cell: CellShape, name: str, node: int, j: int) -> str | None:
  if name == "none":
    return None
  hw, stride = cell.edge(node, j)
  return op_key(name, (*hw, cell.C), cell.C, stride)


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
    jitted, state = jit_eval(fn, dtype)
    args = (state,)
  else:
    jitted, args = jax.jit(fn), ()
  rng = np.random.default_rng(seed)
  xs = [jnp.asarray(rng.standard_normal((batch_size,) + s), dtype) for s in shapes]
  return time_call(jitted, *args, *xs, repeats=repeats)


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
  meta = dict(device_stamp(), batch_size=batch_size, dtype=dtype, unit="ms",
              repeats=repeats, network=layout.network, image=list(layout.image),
              dispatch_ms=dispatch_ms((batch_size,) + layout.image, jdtype))
  return LatencyTable(meta, entries)


def fixed_latency(table: LatencyTable, layout: Layout) -> float:
  """ms of the stem, preprocessing, cell outputs and classifier plus one dispatch (on a
  calibrated table: scaled, plus the fitted offset)."""
  return table.network_ms(sum(table.part_ms(k) for k in _fixed_keys(layout)))


def predict(table: LatencyTable, layout: Layout, genotype: Genotype) -> float:
  """Predicted latency (ms) of the final network of `genotype`: the sum of its parts
  (on a calibrated table, scale * sum + offset). Looks up only the genotype's ops."""
  total = fixed_latency(table, layout)
  for cell in layout.cells:
    edges = genotype.reduce if cell.reduction else genotype.normal
    for e, (name, j) in enumerate(edges):
      key = _op_key(cell, name, e // 2, j)
      total += table.part_ms(key) if key else 0.0
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
          mats[cell.reduction][e, k] += table.part_ms(key) if key else 0.0
        e += 1
  return mats[False], mats[True]


def expected_latency(table: LatencyTable, layout: Layout, primitives) -> ExpectedLatency:
  """E[LAT](alphas) in ms over the DARTS cell (FBNet Eq. 4, ProxylessNAS Eq. 5): fixed +
  sum over cell types, edges e and ops k != none of w_e * p'_{e,k} * LAT_{e,k}.

  p' is softmax(alpha) over the non-`none` ops: the discretizer never keeps `none`, so
  probability on it would lower the estimate without making the derived network faster.
  w_e is edge e's share of the two edges the derived cell keeps per node (the weights of
  a node's inputs sum to 2): 2 / (inputs of its node) under DARTS, 2 * node_softmax(beta)_e
  with PC-DARTS's edge logits. The groups are "normal" and "reduce"; the weights read
  `alphas_{group}` (and `betas_{group}`) of the supernet's ArchParam state.
  """
  primitives = tuple(primitives)
  normal, reduce = op_latency_matrices(table, layout, primitives)
  steps = layout.steps
  keep = np.array([n != "none" for n in primitives])
  uniform = np.concatenate([np.full(i + 2, 2.0 / (i + 2)) for i in range(steps)])
  starts = np.cumsum([0] + [i + 2 for i in range(steps)])

  def weights(alphas):
    get = lambda k: _value(alphas[k]) if k in alphas else None
    out = {}
    for group in ("normal", "reduce"):
      a, b = get(f"alphas_{group}"), get(f"betas_{group}")
      p = jax.nn.softmax(jnp.where(keep, a.astype(jnp.float32), -jnp.inf), axis=-1)
      w = (jnp.asarray(uniform, jnp.float32) if b is None
           else 2.0 * node_softmax(b.astype(jnp.float32), steps))
      out[group] = w[:, None] * p
    return out

  def picks(genotype):
    out = {}
    for group, edges in (("normal", genotype.normal), ("reduce", genotype.reduce)):
      for name in {n for n, _ in edges} - set(primitives):
        raise LatencyError(f"op {name!r} of the genotype is not among the searched ops "
                           f"({', '.join(primitives)})")
      out[group] = [(int(starts[e // 2]) + j, primitives.index(name))
                    for e, (name, j) in enumerate(edges)]
    return out

  # A lower bound: per node, twice the cheapest non-`none` op on its cheapest edge, since
  # each node's edge weights sum to 2.
  minimum = fixed_latency(table, layout) + sum(
      2 * lat[starts[i]:starts[i + 1]][:, keep].min() for lat in (normal, reduce)
      for i in range(steps))
  return ExpectedLatency(fixed_latency(table, layout), {"normal": normal, "reduce": reduce},
                         weights, picks, float(minimum))


def derived_entries(alphas, steps: int, primitives) -> dict:
  """{"normal", "reduce": 0/1 f32[E, K]}: the (edge, op) entries of the cell that DARTS's
  parse derives (`genotypes.parse_weights`: per node the two inputs whose strongest
  non-`none` op weighs most, that op), traced (jnp), from softmax(alpha) (times PC-DARTS's
  node softmax of beta when the state has edge logits)."""
  keep = jnp.asarray([n != "none" for n in primitives])
  starts = np.cumsum([0] + [i + 2 for i in range(steps)])
  out = {}
  for group in ("normal", "reduce"):
    a = _value(alphas[f"alphas_{group}"]).astype(jnp.float32)
    w = jax.nn.softmax(a, axis=-1)
    if f"betas_{group}" in alphas:
      w = w * node_softmax(_value(alphas[f"betas_{group}"]).astype(jnp.float32), steps)[:, None]
    w = jnp.where(keep, w, -jnp.inf)
    op = jax.nn.one_hot(jnp.argmax(w, axis=-1), w.shape[-1])  # f32[E, K]
    strength = jnp.max(w, axis=-1)
    chosen = jnp.zeros(w.shape[:1])
    for i in range(steps):  # top_k: ties to the lower input, as the parse's stable sort
      _, top = jax.lax.top_k(strength[starts[i]:starts[i + 1]], 2)
      chosen = chosen.at[starts[i] + top].set(1.0)
    out[group] = chosen[:, None] * op
  return out


def _value(v):
  return v.get_value() if hasattr(v, "get_value") else v


class DartsLatency:
  """The space's latency model: the supernet's expected latency (differentiable in its
  ArchParam state; built on first use), a genotype's predicted latency (only its own
  ops' entries), and a lower bound."""

  def __init__(self, table: LatencyTable, layout: Layout, primitives):
    self.table, self.layout, self.primitives = table, layout, tuple(primitives)

  @functools.cached_property
  def _expected(self) -> ExpectedLatency:
    return expected_latency(self.table, self.layout, self.primitives)

  def expected(self, alphas) -> jax.Array:
    return self._expected(alphas)

  def derived(self, alphas) -> jax.Array:
    """The derived cell's predicted latency (ms, f32[]) with E[LAT]'s gradient, straight
    through (`latency.estimate=derived`)."""
    return self._expected.straight_through(alphas, derived_entries(alphas, self.layout.steps,
                                                                   self.primitives))

  def predict(self, genotype: Genotype) -> float:
    return predict(self.table, self.layout, genotype)

  def minimum(self) -> float:
    return self._expected.minimum()


def layout_for(model, train, info) -> Layout:
  """The layout of the final network that `train` (a config's `train` section) retrains
  on data `info`, traced from that network built abstractly over the ops of `model` (any
  genotype: shapes do not depend on its ops)."""
  t, m = train, model
  genotype = random_genotype(np.random.default_rng(0), tuple(m.primitives), m.steps,
                             m.multiplier)
  net = nnx.eval_shape(lambda: final.NETWORKS[t.network](
      genotype, t.C, info.num_classes, t.layers, in_channels=info.image_shape[-1],
      rngs=nnx.Rngs(0)))
  return trace_layout(net, tuple(info.image_shape))


def compile_network(layout: Layout, genotype: Genotype, *, batch_size: int,
                    dtype: str = "float32", seed: int = 0):
  """(forward, args): the compiled final network of `genotype` in eval mode and random
  inputs for it; `forward(*args)` is what `measure_network` times."""
  h, w, c = layout.image
  kwargs = dict(in_channels=c, rngs=nnx.Rngs(seed))
  if layout.network == "cifar":
    net = final.NetworkCIFAR(genotype, layout.C, layout.num_classes, len(layout.cells),
                             stem_multiplier=layout.stem_out // layout.C, **kwargs)
  else:
    net = final.NetworkImageNet(genotype, layout.C, layout.num_classes, len(layout.cells),
                                **kwargs)
  jdtype = jnp.dtype(dtype)
  forward, state = jit_eval(net, jdtype)
  x = jnp.asarray(np.random.default_rng(seed).standard_normal((batch_size, h, w, c)), jdtype)
  compiled = forward.lower(state, x).compile()
  return (lambda state, x: compiled(state, x)[0]), (state, x)


def measure_network(layout: Layout, genotype: Genotype, *, batch_size: int,
                    dtype: str = "float32", repeats: int = 50, seed: int = 0) -> dict:
  """End-to-end latency (ms; median and quartiles) of the compiled final network of
  `genotype` in eval mode on random inputs: what `predict` estimates."""
  forward, args = compile_network(layout, genotype, batch_size=batch_size, dtype=dtype,
                                  seed=seed)
  return time_call(forward, *args, repeats=repeats)
