"""NAS-Bench-201 architectures: a cell of 4 nodes whose 6 edges each carry one op.

The string format is the benchmark's (reference `xautodl/models/cell_searchs/genotypes.py`,
`Structure.tostr` / `str2structure`): node i = 1, 2, 3 lists its inputs j = 0..i-1 as
`op~j` between bars, nodes joined by `+`:

  |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|
"""

import dataclasses
import itertools

import numpy as np

from dnas.spaces.base import ArchError
from dnas.spaces.nb201.ops import NAS_BENCH_201

MAX_NODES = 4
# (i, j): the edge from node j into node i, in the supernet's row order (the reference's
# sorted "i<-j" keys).
EDGES = tuple((i, j) for i in range(1, MAX_NODES) for j in range(i))


@dataclasses.dataclass(frozen=True)
class Structure:
  """One op name per edge, in `EDGES` order (6 names of `NAS_BENCH_201`)."""

  ops: tuple[str, ...]

  def __post_init__(self):
    ops = tuple(self.ops)
    object.__setattr__(self, "ops", ops)
    if len(ops) != len(EDGES):
      raise ArchError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(ops)} ops")
    for (i, j), op in zip(EDGES, ops):
      if op not in NAS_BENCH_201:
        raise ArchError(f"node {i} input {j}: unknown op {op!r}; valid: "
                        f"{', '.join(NAS_BENCH_201)}")

  @property
  def nodes(self) -> tuple[tuple[tuple[str, int], ...], ...]:
    """((op, j), ...) for node i = 1, 2, 3: the reference's genotype list."""
    it = iter(zip(self.ops, EDGES))
    return tuple(tuple((op, j) for op, (_, j) in itertools.islice(it, i))
                 for i in range(1, MAX_NODES))

  def __str__(self) -> str:
    return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

  def tostr(self) -> str:
    return str(self)

  @classmethod
  def from_string(cls, text: str) -> "Structure":
    """Parses the benchmark's string; a malformed one is one ArchError line."""
    if not isinstance(text, str):
      raise ArchError(f"a NAS-Bench-201 architecture string is needed, got {text!r}")
    nodes = text.strip().split("+")
    if len(nodes) != MAX_NODES - 1:
      raise ArchError(f"{text!r}: expected {MAX_NODES - 1} nodes joined by '+', got "
                      f"{len(nodes)}")
    ops = []
    for i, node in enumerate(nodes, start=1):
      if not (node.startswith("|") and node.endswith("|") and len(node) > 1):
        raise ArchError(f"{text!r}: node {i} {node!r} must be |op~j|...| between bars")
      edges = node[1:-1].split("|")
      if len(edges) != i:
        raise ArchError(f"{text!r}: node {i} must have {i} inputs, got {len(edges)}")
      for j, edge in enumerate(edges):
        op, sep, src = edge.partition("~")
        if not sep or not (src.isascii() and src.isdigit()):
          raise ArchError(f"{text!r}: node {i}: {edge!r} is not op~input")
        if int(src) != j:
          raise ArchError(f"{text!r}: node {i}: input {j} reads node {src}; node {i} reads "
                          f"nodes 0..{i - 1} in order")
        if op not in NAS_BENCH_201:
          raise ArchError(f"{text!r}: node {i} input {j}: unknown op {op!r}; valid: "
                          f"{', '.join(NAS_BENCH_201)}")
        ops.append(op)
    return cls(tuple(ops))

  str2structure = from_string  # the reference's name

  def to_dict(self) -> dict:
    return {"arch": str(self)}

  @classmethod
  def from_dict(cls, d) -> "Structure":
    if not isinstance(d, dict) or "arch" not in d:
      raise ArchError("a NAS-Bench-201 architecture file holds {\"arch\": \"|op~0|+...\"}")
    return cls.from_string(d["arch"])

  @property
  def index(self) -> int:
    """Position in the 5^6 = 15,625 architectures, ops as base-5 digits in `EDGES`
    order (dnas's enumeration; the benchmark's own files index by their order)."""
    return int(sum(NAS_BENCH_201.index(op) * 5 ** k for k, op in enumerate(reversed(self.ops))))

  @classmethod
  def from_index(cls, index: int) -> "Structure":
    if not 0 <= index < len(NAS_BENCH_201) ** len(EDGES):
      raise ArchError(f"index {index} is outside 0..{len(NAS_BENCH_201) ** len(EDGES) - 1}")
    digits = [(index // 5 ** k) % 5 for k in range(len(EDGES))][::-1]
    return cls(tuple(NAS_BENCH_201[d] for d in digits))

  def parameter_free_ops(self) -> int:
    """Edges whose op has no weights (none, skip_connect, avg_pool_3x3)."""
    return sum(op in ("none", "skip_connect", "avg_pool_3x3") for op in self.ops)


def derive(alphas: np.ndarray, primitives=NAS_BENCH_201) -> Structure:
  """The reference's `genotype()`: each edge's argmax op over its row of f32[6, K]
  architecture logits (`none` included)."""
  alphas = np.asarray(alphas)
  if alphas.shape != (len(EDGES), len(primitives)):
    raise ValueError(f"alphas must be f32[{len(EDGES)}, {len(primitives)}], got {alphas.shape}")
  return Structure(tuple(primitives[int(k)] for k in np.argmax(alphas, axis=-1)))


def random_structure(rng: np.random.Generator, primitives=NAS_BENCH_201) -> Structure:
  """A uniformly drawn architecture of the space."""
  return Structure(tuple(primitives[int(k)] for k in rng.integers(len(primitives), size=len(EDGES))))
