"""The DARTS supernet: search cells whose edges are mixed ops (Liu et al. 2019, Sec. 2.1-2.2).

Layout NHWC. Mirrors the reference `model_search.py` layer for layer (parameter
counts equal): affine-free BatchNorm in cells, a BatchNorm after each pooling op,
and one set of alphas shared by all normal cells and one by all reduction cells.
With `partial_channels=K` and `edge_normalization=True` it is the PC-DARTS supernet
(Xu et al., ICLR 2020; reference yuhuixu1993/PC-DARTS `model_search.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import autodiff
from dnas.arch import (RELAXATIONS, ArchParam, EdgeParam, MixedOp, PartialMixedOp,
                       batched_mixed_ops, checkpointed_call, init_alphas, masked,
                       masked_logits, node_softmax, op_weights, runs_one_op)
from dnas.spaces.darts import genotypes as genotypes_lib
from dnas.kernels import fusion_barrier
from dnas.layers import identical_runs, scan_layers
from dnas.spaces.darts.ops import (PRIMITIVES, FactorizedReduce, ReLUConvBN, batch_norm, conv2d,
                                   linear, make_op)


def num_edges(steps: int) -> int:
  """Edges of a cell with `steps` intermediate nodes: sum_i (i + 2); 14 for steps=4."""
  return sum(2 + i for i in range(steps))


def search_op(name: str, C: int, stride: int, rngs: nnx.Rngs) -> nnx.Module:
  """A candidate op as the supernet builds it: affine-free, pooling followed by BN."""
  op = make_op(name, C, stride, affine=False, rngs=rngs)
  if "pool" in name:
    op = nnx.Sequential(op, batch_norm(C, affine=False, rngs=rngs))
  return op


class Cell(nnx.Module):
  """Search cell: `steps` nodes, node i = sum_{j < i} MixedOp_{j,i}(state_j) (DARTS Eq. 1).

  Inputs s0: f32[N, H0, W0, C_prev_prev], s1: f32[N, H, W, C_prev], the op weights
  f32[E, K] of this cell type and, with edge normalisation, the edge weights f32[E]
  (node i = sum_j edge_weights[j, i] MixedOp_{j,i}(state_j), PC-DARTS Eq. 4). Output
  f32[N, H', W', multiplier * C], H' = H / 2 in a reduction cell.

  `partial_channels` K > 1: every edge is a `PartialMixedOp` whose ops see C / K
  channels (PC-DARTS); C must be divisible by K. `auxiliary_skip`: DARTS-'s auxiliary skip
  connection on every edge (identity; on a reduction cell's stride-2 edges an affine-free
  FactorizedReduce of its own), added with the weight `aux_skip` of the call.
  `scan_edges`: identical edges run as one `lax.scan` (`_scanned`), except under a
  one-hot sample, where each edge runs only its sampled op.
  """

  def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int,
               reduction: bool, reduction_prev: bool, primitives=PRIMITIVES, *,
               partial_channels: int = 1, auxiliary_skip: bool = False, scan_edges: bool = True,
               rngs: nnx.Rngs):
    self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
    self.scan_edges = scan_edges
    if reduction_prev:
      self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False, rngs=rngs)
    else:
      self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False, rngs=rngs)
    self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False, rngs=rngs)
    ops = []
    for i in range(steps):
      for j in range(2 + i):
        stride = 2 if reduction and j < 2 else 1
        if partial_channels > 1:
          candidates = [search_op(p, C // partial_channels, stride, rngs) for p in primitives]
          ops.append(PartialMixedOp(candidates, partial_channels, own_alpha=False))
        else:
          candidates = [search_op(p, C, stride, rngs) for p in primitives]
          ops.append(MixedOp(candidates, own_alpha=False))
    self.ops = nnx.List(ops)
    # The official code gives each stride-2 edge its own FactorizedReduce.
    self.aux_reduce = nnx.List(
        [FactorizedReduce(C, C, affine=False, rngs=rngs) for _ in range(2)]
        if auxiliary_skip and reduction else [])
    self.auxiliary_skip = auxiliary_skip

  def _aux(self, j: int, x):
    return self.aux_reduce[j](x) if self.reduction and j < 2 else x

  def __call__(self, s0, s1, weights, edge_weights=None, aux_skip=None, sampled: bool = False):
    # Each node feeds 8 ops per later edge: keep it (and its gradient) one buffer.
    states = [fusion_barrier(self.preprocess0(s0)), fusion_barrier(self.preprocess1(s1))]
    if not sampled and self.scan_edges and len(identical_runs(self._scanned_ops())) == 1:
      return self._scanned(states, weights, edge_weights, aux_skip)
    offset = 0
    for _ in range(self.steps):
      n = len(states)
      if sampled:  # one-hot weights: each edge runs only its sampled op (no batching)
        scale = (lambda e, y: y) if edge_weights is None else (
            lambda e, y: edge_weights[e].astype(y.dtype) * y)
        s = sum(scale(offset + j, self.ops[offset + j](states[j], weights[offset + j],
                                                       sampled=True))
                for j in range(n))
        offset += n
        states.append(fusion_barrier(self._with_aux(s, states, aux_skip)))
        continue
      # Edges of one stride have identical ops and shapes: run each group as one body.
      groups = [range(2), range(2, n)] if self.reduction else [range(n)]
      s = sum(batched_mixed_ops([self.ops[offset + j] for j in g], [states[j] for j in g],
                                weights[offset + g[0]:offset + g[-1] + 1],
                                None if edge_weights is None
                                else edge_weights[offset + g[0]:offset + g[-1] + 1])
              for g in groups if len(g))
      offset += n
      states.append(fusion_barrier(self._with_aux(s, states, aux_skip)))
    return jnp.concatenate(states[-self.multiplier:], axis=-1)

  def _edges(self) -> list[tuple[int, int, int]]:
    """(edge index, source state, target node) of every edge, in the edges' order."""
    return [(num_edges(i) + j, j, i) for i in range(self.steps) for j in range(2 + i)]

  def _scanned_ops(self) -> list[MixedOp]:
    """The edges that `_scanned` runs as one scan: all of a normal cell's, the stride-1
    edges between nodes of a reduction cell."""
    return [self.ops[e] for e, j, _ in self._edges() if not self.reduction or j >= 2]

  def _scanned(self, states, weights, edge_weights, aux_skip):
    """The cell with its edges in few bodies, for a short compile (XLA compiles a scan's
    body once): a normal cell's edges as one `lax.scan` over a buffer of its inputs and
    nodes, in edge order (a node is complete before an edge reads it); a reduction
    cell's stride-2 edges as one vmapped pair per node (a scan or vmap of all eight ran
    slower steps, BUILD_NOTES.md "Compile time") and its edges between nodes as one
    scan. Values, gradients and BatchNorm statistics are the loop's."""
    n, h, w, c = states[0].shape
    if not self.reduction:
      buf = jnp.concatenate([jnp.stack(states), jnp.zeros((self.steps, n, h, w, c),
                                                          states[0].dtype)])
      buf = self._edge_scan(self._edges(), buf, 0, weights, edge_weights, aux_skip)
      return jnp.concatenate(list(buf[2 + self.steps - self.multiplier:]), axis=-1)
    nodes = []
    for i in range(self.steps):
      e = num_edges(i)
      s = batched_mixed_ops([self.ops[e], self.ops[e + 1]], states, weights[e:e + 2],
                            None if edge_weights is None else edge_weights[e:e + 2])
      nodes.append(self._with_aux(s, states, aux_skip))
    inner = [t for t in self._edges() if t[1] >= 2]
    nodes = self._edge_scan(inner, jnp.stack(nodes), 2, weights, edge_weights, aux_skip)
    return jnp.concatenate(list(nodes[self.steps - self.multiplier:]), axis=-1)

  def _edge_scan(self, edges, buf, first: int, weights, edge_weights, aux_skip):
    """For each edge (e, j, i) in order, state i + 2 += MixedOp_e(state j), as one scan
    over the edges' ops. buf: f32[S, N, H, W, C], the states from `first` on (state j
    at buf[j - first]; node i is state i + 2)."""
    idx = np.asarray([e for e, _, _ in edges])
    xs = (jnp.asarray([j - first for _, j, _ in edges], jnp.int32),
          jnp.asarray([i + 2 - first for _, _, i in edges], jnp.int32), weights[idx],
          None if edge_weights is None else edge_weights[idx])

    def edge(op, buf, x):
      src, dst, w, ew = x
      h = jax.lax.dynamic_index_in_dim(buf, src, keepdims=False)
      y = op(h, w)
      if ew is not None:
        y = ew.astype(y.dtype) * y
      if aux_skip is not None:  # DARTS-'s skip on a stride-1 edge is the identity
        y = y + aux_skip.astype(y.dtype) * h
      t = jax.lax.dynamic_index_in_dim(buf, dst, keepdims=False)
      return jax.lax.dynamic_update_index_in_dim(buf, t + y, dst, 0)

    return scan_layers([self.ops[int(e)] for e in idx], edge, buf, xs)

  def _with_aux(self, s, states, aux_skip):
    """s + aux_skip * sum_j aux_j(state_j) over the node's inputs (DARTS-), or s."""
    if aux_skip is None:
      return s
    if not self.auxiliary_skip:
      raise ValueError("aux_skip needs a supernet built with auxiliary_skip=True")
    return s + aux_skip.astype(s.dtype) * sum(self._aux(j, x) for j, x in enumerate(states))


class Network(nnx.Module):
  """The DARTS supernet (reference `model_search.Network`).

  Args:
    C: channels of the first stage (16 in the paper).
    num_classes: classifier outputs.
    layers: cells; reduction cells at layers // 3 and 2 * layers // 3.
    steps: intermediate nodes per cell.
    multiplier: how many of the last nodes are concatenated into the cell output.
    stem_multiplier: the stem outputs stem_multiplier * C channels.
    in_channels: image channels (3 for CIFAR, 1 for digits).
    primitives: candidate op names, the columns of the alphas.
    partial_channels: K; each edge's ops see C / K channels (PC-DARTS; 1: DARTS); C must be
      divisible by K (then the doubled stages' C / K are even, as FactorizedReduce needs).
    edge_normalization: PC-DARTS edge weights: architecture logits beta per edge
      (`betas_normal`, `betas_reduce`, f32[E]), softmax over each node's inputs.
    relaxation: how op weights come from the alphas (`dnas.arch.op_weights`): "softmax"
      (DARTS), "gumbel" (when called with `arch_key` and `tau`, a Gumbel-softmax sample,
      one per cell type and call: FBNet, GDAS; `gumbel_hard` makes it a straight-through
      one-hot and each edge runs only its sampled op), "dirichlet" (with `arch_key`, a
      Dirichlet sample per cell type and call: DrNAS) or "sigmoid" (FairDARTS). Called
      without a key (evaluation), gumbel mixes with softmax(alpha), dirichlet with the
      Dirichlet's mean.
    auxiliary_skip: DARTS-'s auxiliary skip connection on every edge (`Cell`), weighted
      by the call's `aux_skip`.
    op_mask: {"normal": bool[E, K], "reduce": bool[E, K]}: the ops still candidates on each
      edge (DrNAS's progressive pruning): the op weights are renormalised over them.
    remat: recompute each cell's activations in the backward pass (`jax.checkpoint`)
      instead of keeping them: less memory for one more forward pass. Also on while
      tracing inside `dnas.autodiff.rematerialize()`.
    scan_edges: run a cell's identical edges as one `lax.scan` (`Cell`; compiled once,
      values the loop's); False, or tracing inside `dnas.layers.unrolled()`, gives the
      loop over nodes.

  Call: f32[N, H, W, in_channels] -> logits f32[N, num_classes]. BatchNorm uses batch
  statistics after `net.train()` (the default) and running ones after `net.eval()`.
  """

  def __init__(self, C: int, num_classes: int, layers: int, steps: int = 4,
               multiplier: int = 4, stem_multiplier: int = 3, *, in_channels: int = 3,
               primitives=PRIMITIVES, partial_channels: int = 1,
               edge_normalization: bool = False, relaxation: str = "softmax",
               gumbel_hard: bool = False, auxiliary_skip: bool = False, remat: bool = False,
               op_mask: dict | None = None, scan_edges: bool = True, rngs: nnx.Rngs):
    for name, v in dict(C=C, num_classes=num_classes, layers=layers, steps=steps,
                        multiplier=multiplier, stem_multiplier=stem_multiplier,
                        partial_channels=partial_channels).items():
      if v < 1:
        raise ValueError(f"Network: {name} must be >= 1, got {v}")
    if multiplier > steps:
      raise ValueError(f"Network: multiplier ({multiplier}) must be <= steps ({steps})")
    K = partial_channels
    if C % K:
      raise ValueError(f"Network: partial_channels={K} needs C divisible by {K}, got C={C}")
    if relaxation not in RELAXATIONS:
      raise ValueError(f"Network: relaxation {relaxation!r} is unknown; valid: "
                       f"{', '.join(RELAXATIONS)}")
    self.partial_channels, self.edge_normalization = K, edge_normalization
    self.relaxation, self.gumbel_hard = relaxation, gumbel_hard
    self.primitives = tuple(primitives)
    # Static (part of the graph definition): a new mask is a new program.
    self.op_mask = None if op_mask is None else tuple(
        tuple(tuple(bool(b) for b in row) for row in op_mask[k]) for k in ("normal", "reduce"))
    self.steps, self.multiplier, self.layers, self.remat = steps, multiplier, layers, remat
    C_curr = stem_multiplier * C
    # The supernet's stem BatchNorm is affine in the reference.
    self.stem = nnx.Sequential(conv2d(in_channels, C_curr, 3, 1, 1, rngs=rngs),
                               batch_norm(C_curr, affine=True, rngs=rngs))
    C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
    cells, reduction_prev = [], False
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      if reduction:
        C_curr *= 2
      cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                        reduction_prev, self.primitives, partial_channels=K,
                        auxiliary_skip=auxiliary_skip, scan_edges=scan_edges, rngs=rngs))
      reduction_prev = reduction
      C_prev_prev, C_prev = C_prev, multiplier * C_curr
    self.cells = nnx.List(cells)
    self.classifier = linear(C_prev, num_classes, rngs=rngs)
    shape = (num_edges(steps), len(self.primitives))
    self.alphas_normal = init_alphas(rngs.params(), shape)
    self.alphas_reduce = init_alphas(rngs.params(), shape)
    if edge_normalization:
      self.betas_normal = EdgeParam(init_alphas(rngs.params(), shape[:1])[...])
      self.betas_reduce = EdgeParam(init_alphas(rngs.params(), shape[:1])[...])

  def edge_weights(self) -> tuple[jax.Array, jax.Array] | tuple[None, None]:
    """(normal, reduce) f32[E] edge weights (PC-DARTS), or (None, None)."""
    if not self.edge_normalization:
      return None, None
    return (node_softmax(self.betas_normal[...], self.steps),
            node_softmax(self.betas_reduce[...], self.steps))

  def __call__(self, x, *, arch_key: jax.Array | None = None, tau=None, aux_skip=None,
               weights: dict | None = None):
    """f32[N, H, W, C] -> f32[N, num_classes]; `arch_key` (PRNG key) and `tau` (f32[])
    draw the op weights of the sampling relaxations (gumbel: both; dirichlet: the key);
    `aux_skip` (f32[]) weighs DARTS-'s auxiliary skips (built with auxiliary_skip).
    `weights` ({"normal": f32[E, K], "reduce": f32[E, K]}) replaces the op weights
    (DARTS-PT's projected and masked ones)."""
    s0 = s1 = self.stem(x)
    k_normal = k_reduce = None
    if arch_key is not None:
      k_normal, k_reduce = jax.random.split(arch_key)
    if weights is not None:
      w_normal, w_reduce = weights["normal"], weights["reduce"]
    else:
      w_normal = op_weights(self.alphas_normal[...], self.relaxation, k_normal, tau,
                            self.gumbel_hard)
      w_reduce = op_weights(self.alphas_reduce[...], self.relaxation, k_reduce, tau,
                            self.gumbel_hard)
      if self.op_mask is not None:
        w_normal, w_reduce = (masked(w, np.asarray(m)) for w, m in zip((w_normal, w_reduce),
                                                                       self.op_mask))
    hard = runs_one_op(self.relaxation, arch_key, self.gumbel_hard)
    e_normal, e_reduce = self.edge_weights()
    remat = self.remat or autodiff.remat_requested()
    for cell in self.cells:
      w, e = (w_reduce, e_reduce) if cell.reduction else (w_normal, e_normal)
      s0, s1 = s1, (checkpointed_call(cell, s0, s1, w, e, aux_skip, sampled=hard) if remat
                    else cell(s0, s1, w, e, aux_skip, hard))
    return self.classifier(jnp.mean(s1, axis=(1, 2)))

  def arch_parameters(self) -> tuple[ArchParam, ...]:
    if self.edge_normalization:
      return self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce
    return self.alphas_normal, self.alphas_reduce

  def genotype(self) -> genotypes_lib.Genotype:
    """The discrete cell that the current architecture parameters select (DARTS
    Sec. 2.4; with edge normalisation, PC-DARTS's rule on softmax(alpha) * beta)."""
    betas = ((self.betas_normal[...], self.betas_reduce[...]) if self.edge_normalization
             else (None, None))
    a_normal, a_reduce = self.alphas_normal[...], self.alphas_reduce[...]
    if self.op_mask is not None:
      a_normal, a_reduce = (masked_logits(a, m) for a, m in zip((a_normal, a_reduce),
                                                                self.op_mask))
    return genotypes_lib.derive_genotype(a_normal, a_reduce,
                                         steps=self.steps, multiplier=self.multiplier,
                                         primitives=self.primitives, betas_normal=betas[0],
                                         betas_reduce=betas[1])
