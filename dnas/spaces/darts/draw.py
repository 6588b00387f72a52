"""Drawings of DARTS cells, as the DARTS paper's figures show them (`python -m dnas.plot`)."""

import os

from dnas import plotting

# Colours of the DARTS paper's cell figures: inputs, intermediate nodes, output.
_NODE_COLOURS = {"input": "#a8e6a3", "node": "#a3c9f0", "output": "#f5e08c"}


def cell_graph(genotype, kind: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
  """The drawn graph of one cell of a `darts.Genotype`.

  Returns:
    nodes: [(name, role)], names "c_{k-2}", "c_{k-1}", "0", "1", ..., "c_{k}" and roles
      "input", "node", "output".
    edges: [(src, dst, label)]: one per genotype edge, labelled with its op, and an
      unlabelled ("") edge from every concatenated state into "c_{k}".
  """
  if kind not in ("normal", "reduce"):
    raise ValueError(f"kind must be 'normal' or 'reduce', got {kind!r}")
  pairs, concat = getattr(genotype, kind), getattr(genotype, f"{kind}_concat")
  steps = len(pairs) // 2
  states = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
  nodes = [(s, "input") for s in states[:2]] + [(s, "node") for s in states[2:]]
  nodes.append(("c_{k}", "output"))
  edges = [(states[j], states[p // 2 + 2], op) for p, (op, j) in enumerate(pairs)]
  edges += [(states[c], "c_{k}", "") for c in concat]
  return nodes, edges


def _layout(nodes) -> dict[str, tuple[float, float]]:
  """Inputs on the left, intermediate nodes in a staggered column top to bottom, the
  output on the right (the DARTS figures' left-to-right order)."""
  inner = [n for n, role in nodes if role == "node"]
  top = 0.7 * (len(inner) - 1)
  pos = {"c_{k-2}": (0.0, top * 0.6 + 0.4), "c_{k-1}": (0.0, -top * 0.6 - 0.4)}
  for i, n in enumerate(inner):
    pos[n] = (2.6 + 0.9 * (i % 2), top - 1.4 * i)
  pos["c_{k}"] = (5.6, 0.0)
  return pos


def _bezier(p0, p1, rad, t):
  """Point t of matplotlib's `arc3,rad=rad` connection from p0 to p1 (a quadratic
  Bezier whose control point is the midpoint moved by rad * (dy, -dx))."""
  (x0, y0), (x1, y1) = p0, p1
  cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
  a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
  return a * x0 + b * cx + c * x1, a * y0 + b * cy + c * y1


def plot_cell(genotype, kind: str, path_prefix: str) -> list[str]:
  """Draws one cell as the DARTS paper's figures do (nodes, edges labelled with ops) and
  writes `<path_prefix>.png` and `<path_prefix>.svg`. Returns the two paths."""
  from matplotlib.patches import FancyArrowPatch  # pylint: disable=g-import-not-at-top
  nodes, edges = cell_graph(genotype, kind)
  pos = _layout(nodes)
  ys = [y for _, y in pos.values()]
  plt = plotting.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 1.1 * (max(ys) - min(ys)) + 1.8))
  for src, dst, label in edges:
    p0, p1 = pos[src], pos[dst]
    # Edges between intermediate nodes bend out to the right of the column.
    rad = -0.45 if src[0].isdigit() and dst[0].isdigit() else 0.0
    ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle="-|>", mutation_scale=12,
                                 connectionstyle=f"arc3,rad={rad}",
                                 color="0.15" if label else "0.6", lw=1.1,
                                 shrinkA=16, shrinkB=16, zorder=1))
    if label:  # near the head: a node's two inputs arrive from different sides
      lx, ly = _bezier(p0, p1, rad, 0.62)
      ax.text(lx, ly, label, fontsize=8, ha="center", va="center", zorder=3,
              bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
  for name, role in nodes:
    x, y = pos[name]
    ax.text(x, y, name, fontsize=10, ha="center", va="center", zorder=4,
            bbox=dict(boxstyle="round,pad=0.45", fc=_NODE_COLOURS[role], ec="0.3"))
  ax.set_xlim(-0.7, 6.3)
  ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
  ax.set_axis_off()
  ax.set_title(f"{kind} cell", fontsize=11)
  fig.tight_layout()
  paths = [f"{path_prefix}.png", f"{path_prefix}.svg"]
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  fig.savefig(paths[0], dpi=130)
  fig.savefig(paths[1])
  plt.close(fig)
  return paths


def plot_genotype(genotype, path_prefix: str) -> list[str]:
  """Both cells: `<path_prefix>_normal.{png,svg}` and `<path_prefix>_reduce.{png,svg}`."""
  return [p for kind in ("normal", "reduce")
          for p in plot_cell(genotype, kind, f"{path_prefix}_{kind}")]
