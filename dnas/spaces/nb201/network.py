"""NAS-Bench-201's networks: the final `TinyNetwork` of one architecture, and the
supernet `Network` whose edges mix all candidate ops (Dong & Yang, ICLR 2020).

NHWC. The skeleton mirrors the reference `xautodl` (`cell_infers/tiny_network.py`,
`cell_searchs/search_model_darts.py`, `search_model_gdas.py`) layer for layer: a 3x3 conv
stem to C channels and BN; three stages of N cells at C, 2C and 4C channels with a ResNet
basic block of stride 2 between them; BN, ReLU, global average pooling and a linear
classifier. A cell has 4 nodes; node i is the sum over j < i of edge (i, j) applied to
node j; the cell's output is node 3.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dnas import autodiff
from dnas.arch import (RELAXATIONS, MixedOp, checkpointed_call, init_alphas, op_weights,
                       runs_one_op)
from dnas.layers import batch_norm, conv2d, identical_runs, linear, scan_layers
from dnas.spaces.nb201.ops import NAS_BENCH_201, ResNetBasicblock, make_op
from dnas.spaces.nb201.structure import EDGES, MAX_NODES, Structure, derive


def _stages(C: int, N: int):
  """(channels, is_reduction) per layer: N cells, a block, N cells, a block, N cells."""
  channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
  reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
  return list(zip(channels, reductions))


def _run_cells(cells, call, x, remat: bool = False):
  """x through `call(cell, x)` for each cell: a loop for one, a `lax.scan` for several
  (structurally identical: `dnas.layers.identical_runs`)."""
  if len(cells) == 1:
    return call(cells[0], x)
  return scan_layers(cells, lambda cell, x, _: call(cell, x), x, remat=remat)


def _stem(in_channels: int, C: int, rngs: nnx.Rngs) -> nnx.Sequential:
  return nnx.Sequential(conv2d(in_channels, C, 3, 1, 1, rngs=rngs), batch_norm(C, True))


class InferCell(nnx.Module):
  """The cell of one architecture (reference `InferCell`): every edge's op, `none`s
  included. f32[N, H, W, C_in] -> f32[N, H, W, C_out]."""

  def __init__(self, arch: Structure, C_in: int, C_out: int, *, rngs: nnx.Rngs):
    self.layers = nnx.List([make_op(op, C_in if j == 0 else C_out, C_out, 1, rngs=rngs)
                            for op, (_, j) in zip(arch.ops, EDGES)])

  def __call__(self, x):
    nodes = [x]
    for i in range(1, MAX_NODES):
      nodes.append(sum(self.layers[e](nodes[j]) for e, (ii, j) in enumerate(EDGES) if ii == i))
    return nodes[-1]


class TinyNetwork(nnx.Module):
  """The network of one NAS-Bench-201 architecture (reference `TinyNetwork`).

  Args:
    arch: a `Structure` or its string.
    C: channels of the first stage (16 in the benchmark).
    N: cells per stage (5 in the benchmark).
    num_classes: classifier outputs.
    in_channels: image channels.
    scan_cells: run each stage's N identical cells as one `lax.scan` (compiled once;
      values and gradients are the loop's).

  Call: f32[B, H, W, in_channels] -> logits f32[B, num_classes].
  """

  def __init__(self, arch, C: int = 16, N: int = 5, num_classes: int = 10, *,
               in_channels: int = 3, scan_cells: bool = True, rngs: nnx.Rngs):
    self.arch = arch if isinstance(arch, Structure) else Structure.from_string(arch)
    self.scan_cells = scan_cells
    self.stem = _stem(in_channels, C, rngs)
    cells, C_prev = [], C
    for C_curr, reduction in _stages(C, N):
      cells.append(ResNetBasicblock(C_prev, C_curr, 2, rngs=rngs) if reduction
                   else InferCell(self.arch, C_prev, C_curr, rngs=rngs))
      C_prev = C_curr
    self.cells = nnx.List(cells)
    self.lastact_bn = batch_norm(C_prev, True)
    self.classifier = linear(C_prev, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.stem(x)
    for run in identical_runs(self.cells, scan=self.scan_cells):
      x = _run_cells([self.cells[i] for i in run], lambda cell, x: cell(x), x)
    return self.classifier(jnp.mean(jax.nn.relu(self.lastact_bn(x)), axis=(1, 2)))


class SearchCell(nnx.Module):
  """The supernet cell (reference `NAS201SearchCell`): each edge a `MixedOp` over the
  candidate ops, with the op weights f32[6, K] passed in (shared by all cells)."""

  def __init__(self, C_in: int, C_out: int, primitives, affine: bool,
               track_running_stats: bool, *, rngs: nnx.Rngs):
    # The reference builds every edge's ops with C_in inputs (C_in == C_out in the cells).
    self.edges = nnx.List([
        MixedOp([make_op(p, C_in, C_out, 1, affine, track_running_stats, rngs=rngs)
                 for p in primitives], own_alpha=False) for _ in EDGES])

  def __call__(self, x, weights, aux_skip=None, sampled: bool = False):
    """`aux_skip` (f32[], optional): DARTS-'s auxiliary skip connection, aux_skip * x_j
    added on every edge beside its mixture (all cell edges have stride 1)."""
    # Each edge on its own: vmapping a node's edges (`batched_mixed_ops`, as the DARTS
    # cell does) batches the conv kernels, and XLA:CPU's backward of such a conv was 5x
    # slower at the digits shapes (BUILD_NOTES.md, "Design decisions").
    nodes = [x]
    for i in range(1, MAX_NODES):
      inputs = [j for ii, j in EDGES if ii == i]
      node = sum(self.edges[e](nodes[j], weights[e], sampled=sampled)
                 for e, (ii, j) in enumerate(EDGES) if ii == i)
      if aux_skip is not None:
        node = node + aux_skip.astype(node.dtype) * sum(nodes[j] for j in inputs)
      nodes.append(node)
    return nodes[-1]


class Network(nnx.Module):
  """The NAS-Bench-201 supernet (reference `TinyNetworkDarts` / `TinyNetworkGDAS`): one
  row of architecture logits per edge (`alphas`, f32[6, K], ~1e-3 N(0, 1)) shared by all
  cells.

  Args:
    C: channels of the first stage, as `TinyNetwork`.
    N: cells per stage, as `TinyNetwork`.
    num_classes: classes of the classifier.
    in_channels: image channels.
    primitives: candidate op names (the alpha columns), NAS_BENCH_201 by default.
    affine: of the cells' BatchNorms (the reference searches with affine=False).
    track_running_stats: of the cells' BatchNorms (the reference's scripts choose it
      with BN=0/1).
    relaxation: `dnas.arch.op_weights`: "softmax" (DARTS), "gumbel" (GDAS with
      `gumbel_hard`: a straight-through one-hot sample per call, shared by all cells; each
      edge runs only its sampled op), "dirichlet" (DrNAS: a sample per call, shared by
      all cells), "sigmoid" (FairDARTS) or "uniform" (SPOS: one op per edge drawn
      uniformly per call, shared by all cells, only that op runs). Called without
      `arch_key` (evaluation), gumbel and uniform mix with softmax(alpha), dirichlet
      with the Dirichlet's mean.
    remat: recompute each cell's activations in the backward pass (`jax.checkpoint`).
    scan_cells: run each stage's N identical cells as one `lax.scan` (compiled once;
      values, gradients and BatchNorm statistics are the loop's).

  Call: f32[B, H, W, in_channels] -> logits f32[B, num_classes].
  """

  def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, *, in_channels: int = 3,
               primitives=NAS_BENCH_201, affine: bool = False,
               track_running_stats: bool = True, relaxation: str = "softmax",
               gumbel_hard: bool = False, remat: bool = False, scan_cells: bool = True,
               rngs: nnx.Rngs):
    for name, v in dict(C=C, N=N, num_classes=num_classes).items():
      if v < 1:
        raise ValueError(f"nb201.Network: {name} must be >= 1, got {v}")
    bad = [p for p in primitives if p not in NAS_BENCH_201]
    if bad:
      raise ValueError(f"nb201.Network: unknown op {bad[0]!r}; valid: {', '.join(NAS_BENCH_201)}")
    if relaxation not in RELAXATIONS:
      raise ValueError(f"nb201.Network: relaxation {relaxation!r} is unknown; valid: "
                       f"{', '.join(RELAXATIONS)}")
    self.primitives = tuple(primitives)
    self.relaxation, self.gumbel_hard, self.remat = relaxation, gumbel_hard, remat
    self.scan_cells = scan_cells
    self.stem = _stem(in_channels, C, rngs)
    cells, C_prev = [], C
    for C_curr, reduction in _stages(C, N):
      cells.append(ResNetBasicblock(C_prev, C_curr, 2, rngs=rngs) if reduction
                   else SearchCell(C_prev, C_curr, self.primitives, affine,
                                   track_running_stats, rngs=rngs))
      C_prev = C_curr
    self.cells = nnx.List(cells)
    self.lastact_bn = batch_norm(C_prev, True)
    self.classifier = linear(C_prev, num_classes, rngs=rngs)
    self.alphas = init_alphas(rngs.params(), (len(EDGES), len(self.primitives)))

  def __call__(self, x, *, arch_key: jax.Array | None = None, tau=None,
               weights: jax.Array | None = None, aux_skip=None):
    """f32[B, H, W, C] -> f32[B, num_classes]; `arch_key` (PRNG key) and `tau` (f32[])
    draw the op weights of the sampling relaxations (gumbel: both; dirichlet, uniform:
    the key).
    `weights` (f32[6, K])
    replaces the op weights: with one-hot rows the supernet is one architecture's
    network, the architecture as data (evaluating a sample of architectures with shared
    weights, training many architectures with one compiled program). `aux_skip` (f32[]):
    DARTS-'s auxiliary skip weight on every cell edge."""
    hard = False
    if weights is not None:
      weights = jnp.asarray(weights, jnp.float32)
    else:
      weights = op_weights(self.alphas[...], self.relaxation, arch_key, tau, self.gumbel_hard)
      hard = runs_one_op(self.relaxation, arch_key, self.gumbel_hard)
    remat = self.remat or autodiff.remat_requested()
    x = self.stem(x)
    for run in identical_runs(self.cells, scan=self.scan_cells):
      cells = [self.cells[i] for i in run]
      if not isinstance(cells[0], SearchCell):
        x = _run_cells(cells, lambda cell, x: cell(x), x)
      elif len(cells) == 1 and remat:
        x = checkpointed_call(cells[0], x, weights, aux_skip, sampled=hard)
      else:
        x = _run_cells(cells, lambda cell, x: cell(x, weights, aux_skip, hard), x, remat)
    return self.classifier(jnp.mean(jax.nn.relu(self.lastact_bn(x)), axis=(1, 2)))

  def genotype(self) -> Structure:
    """The architecture the current logits select (each edge's argmax)."""
    return derive(self.alphas[...], self.primitives)

