"""Genotypes: discrete DARTS cells, the discretisation rule, and their JSON form.

A genotype lists, for each intermediate node i of a cell, two (op, input) pairs:
inputs 0 and 1 are the two cell inputs, input j >= 2 is node j - 2. `*_concat` names
the states concatenated into the cell output. The JSON form is

  {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ...], "normal_concat": [2, 3, 4, 5],
   "reduce": [["max_pool_3x3", 0], ...], "reduce_concat": [2, 3, 4, 5]}

and is parsed as data (the reference `eval`s genotype strings; we never do).
"""

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from dnas.spaces.base import ArchError
from dnas.spaces.darts.ops import OPS, PRIMITIVES

CELL_KEYS = ("normal", "reduce")


class GenotypeError(ArchError):
  """A genotype (or genotype file) that does not describe a valid cell."""


def _check_cell(kind: str, edges, concat) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
  if not isinstance(edges, (list, tuple)) or not edges or len(edges) % 2:
    n = len(edges) if isinstance(edges, (list, tuple)) else type(edges).__name__
    raise GenotypeError(f"{kind}: needs 2 edges per node (an even, non-zero count), got {n}")
  out = []
  for p, edge in enumerate(edges):
    if (not isinstance(edge, (list, tuple)) or len(edge) != 2 or not isinstance(edge[0], str)
        or not isinstance(edge[1], int) or isinstance(edge[1], bool)):
      raise GenotypeError(f"{kind} edge {p}: expected [op_name, input_index], got {edge!r}")
    op, j = edge
    if op not in OPS:
      raise GenotypeError(f"{kind} edge {p}: unknown op {op!r}; valid ops: {', '.join(OPS)}")
    node = p // 2 + 2
    if not 0 <= j < node:
      raise GenotypeError(f"{kind} edge {p}: node {node} cannot read state {j}; "
                          f"allowed inputs are 0..{node - 1}")
    out.append((op, j))
  steps = len(out) // 2
  if (not isinstance(concat, (list, tuple, range)) or not concat
      or any(not isinstance(c, int) or isinstance(c, bool) for c in concat)):
    raise GenotypeError(f"{kind}_concat: expected a non-empty list of state indices, got {concat!r}")
  concat = tuple(concat)
  if len(set(concat)) != len(concat) or not all(0 <= c < steps + 2 for c in concat):
    raise GenotypeError(f"{kind}_concat: {list(concat)} must be distinct states in 0..{steps + 1}")
  return tuple(out), concat


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A discrete cell pair (reference `Genotype` namedtuple), validated on creation."""
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]

  def __post_init__(self):
    for kind in CELL_KEYS:
      edges, concat = _check_cell(kind, getattr(self, kind), getattr(self, f"{kind}_concat"))
      object.__setattr__(self, kind, edges)
      object.__setattr__(self, f"{kind}_concat", concat)

  def to_dict(self) -> dict:
    return {k: [list(e) for e in getattr(self, k)] if k in CELL_KEYS else list(getattr(self, k))
            for k in ("normal", "normal_concat", "reduce", "reduce_concat")}

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_dict(cls, d) -> "Genotype":
    if not isinstance(d, dict):
      raise GenotypeError(f"a genotype is a JSON object, got {type(d).__name__}")
    keys = ("normal", "normal_concat", "reduce", "reduce_concat")
    missing, extra = [k for k in keys if k not in d], sorted(set(d) - set(keys))
    if missing or extra:
      raise GenotypeError(f"genotype keys must be {list(keys)}; missing {missing}, unexpected {extra}")
    return cls(**{k: d[k] for k in keys})

  @classmethod
  def from_json(cls, text: str) -> "Genotype":
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise GenotypeError(f"not JSON ({e})") from None
    return cls.from_dict(d)

  def __str__(self):
    cell = lambda es: " ".join(f"{op}<-{j}" for op, j in es)
    return (f"normal[{cell(self.normal)}] concat{list(self.normal_concat)} | "
            f"reduce[{cell(self.reduce)}] concat{list(self.reduce_concat)}")


def save(genotype: Genotype, path: str | os.PathLike) -> None:
  with open(path, "w") as f:
    json.dump(genotype.to_dict(), f, indent=1)
    f.write("\n")


def load(path: str | os.PathLike) -> Genotype:
  """Reads a genotype JSON file; any problem raises GenotypeError naming the file."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise GenotypeError(f"cannot read genotype file {path}: {e.strerror}") from None
  try:
    return Genotype.from_json(text)
  except GenotypeError as e:
    raise GenotypeError(f"{path}: {e}") from None


def parse_weights(weights: np.ndarray, steps: int,
                  primitives: Sequence[str]) -> list[tuple[str, int]]:
  """One cell's (op, input) pairs from its op weights f32[E, K] (DARTS's parse)."""
  # DARTS Sec. 2.4: per node, the two inputs whose strongest non-`none` op weighs most
  # (stable sort: ties go to the lower input), then that op (ties: lowest op index).
  allowed = [k for k, p in enumerate(primitives) if p != "none"]
  gene, start = [], 0
  for i in range(steps):
    W = weights[start:start + i + 2][:, allowed]
    strength = W.max(axis=1)
    edges = sorted(range(i + 2), key=lambda j: -strength[j])[:2]
    for j in edges:
      gene.append((primitives[allowed[int(np.argmax(W[j]))]], j))
    start += i + 2
  return gene


def derive_genotype(alphas_normal, alphas_reduce, *, steps: int = 4, multiplier: int = 4,
                    primitives: Sequence[str] = PRIMITIVES, betas_normal=None,
                    betas_reduce=None, weights: str = "softmax") -> Genotype:
  """Discretises the supernet (reference `Network.genotype()`).

  Args:
    alphas_normal: f32[E, K] logits of the normal cell, E = sum_{i<steps} (i + 2),
      K = len(primitives).
    alphas_reduce: f32[E, K] logits of the reduction cell.
    betas_normal: optional f32[E] PC-DARTS edge logits of the normal cell; the rule then
      ranks edges by softmax(alpha) times each node's softmax of beta (reference
      PC-DARTS `genotype()`). The op on a kept edge is unchanged by the edge weight.
    betas_reduce: the same for the reduction cell.
    weights: how the logits become the op weights that rank edges and ops: "softmax"
      (DARTS) or "sigmoid" (FairDARTS, whose ops do not share one unit of weight).

  Returns:
    The Genotype; both cells concatenate the last `multiplier` nodes.
  """
  def softmax(a):
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

  def node_softmax(b):
    b = np.asarray(b, np.float64)
    starts = np.cumsum([0] + [i + 2 for i in range(steps)])
    return np.concatenate([softmax(b[s:e]) for s, e in zip(starts[:-1], starts[1:])])

  if weights not in ("softmax", "sigmoid"):
    raise ValueError(f"weights {weights!r} is unknown; valid: softmax, sigmoid")
  weights_kind = weights
  E = sum(i + 2 for i in range(steps))
  for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
    if np.shape(a) != (E, len(primitives)):
      raise ValueError(f"{name} has shape {np.shape(a)}, expected {(E, len(primitives))}")
  weights = {}
  for cell, a, b in (("normal", alphas_normal, betas_normal),
                     ("reduce", alphas_reduce, betas_reduce)):
    weights[cell] = (softmax(a) if weights_kind == "softmax"
                     else 1 / (1 + np.exp(-np.asarray(a, np.float64))))
    if b is not None:
      if np.shape(b) != (E,):
        raise ValueError(f"betas_{cell} has shape {np.shape(b)}, expected {(E,)}")
      weights[cell] = weights[cell] * node_softmax(b)[:, None]
  concat = tuple(range(2 + steps - multiplier, steps + 2))
  return Genotype(normal=parse_weights(weights["normal"], steps, primitives),
                  normal_concat=concat, reduce=parse_weights(weights["reduce"], steps, primitives),
                  reduce_concat=concat)


# Published cells, as in the reference genotypes.py.
NASNet = Genotype(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
    reduce_concat=[4, 5, 6],
)

AmoebaNet = Genotype(
    normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1)],
    normal_concat=[4, 5, 6],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
    reduce_concat=[3, 4, 6],
)

DARTS_V1 = Genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

# PC-DARTS's published cells (Xu et al. 2020; reference yuhuixu1993/PC-DARTS genotypes.py).
PC_DARTS_cifar = Genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=[2, 3, 4, 5],
)
PC_DARTS_image = Genotype(
    normal=[("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    reduce_concat=[2, 3, 4, 5],
)
PCDARTS = PC_DARTS_cifar

GENOTYPES = {"NASNet": NASNet, "AmoebaNet": AmoebaNet, "DARTS_V1": DARTS_V1,
             "DARTS_V2": DARTS_V2, "PC_DARTS_cifar": PC_DARTS_cifar,
             "PC_DARTS_image": PC_DARTS_image}
