"""The module layering of docs/design.md: every dnas import goes down (or sideways within
a layer, without cycles), and none is deferred into a function to dodge a cycle."""

import ast
import collections
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dnas")

# Bottom to top; a module belongs to the first layer with a matching prefix (docs/design.md).
LAYERS = (
    ("leaves", ("errors", "autodiff", "cpu", "utils", "parallel", "checkpoint", "summaries",
                "plotting", "data", "kernels", "layers", "convert", "trace_cache")),
    ("parts", ("arch", "relaxation", "hypergrad", "optim", "execution", "evaluation",
               "hessian", "deploy", "latency.table", "latency.trace", "latency.expected",
               "latency.objectives", "latency.mixed", "latency")),
    ("spaces", ("spaces",)),
    ("step", ("bilevel",)),
    ("methods", ("methods", "selection")),
    ("config", ("config", "configs")),
    ("drivers", ("loop", "search_lib", "train_lib", "benchmarks")),
    ("entry points", ("cli", "search", "train", "evaluate", "export", "plot", "latency.__main__",
                      "data.prepare")),
)


def _modules() -> dict[str, str]:
  mods = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        mods[name.removesuffix(".__init__").removesuffix("__init__") or "__init__"] = path
  return mods


def _layer(name: str) -> int:
  # The longest matching prefix decides (entry points such as latency.__main__ sit above
  # their package).
  best, level = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (name == p or name.startswith(p + ".")) and len(p) > best:
        best, level = len(p), i
  if level is None:
    raise AssertionError(f"dnas.{name} is in no layer of tests/test_layers.py")
  return level


def _imports(mods):
  """{module: [(imported module, at top level?)]} of dnas-internal imports."""
  out = collections.defaultdict(list)
  for name, path in mods.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}"[5:] in mods
                   else node.module for a in node.names]
      for t in targets:
        if t.startswith("dnas.") and t[5:] in mods and t[5:] != name:
          out[name].append((t[5:], id(node) in top))
  return out


MODS = _modules()
IMPORTS = _imports(MODS)


@pytest.mark.parametrize("name", sorted(n for n in MODS if n != "__init__"))
def test_imports_go_down_and_are_not_deferred(name):
  for target, top in IMPORTS[name]:
    assert top, f"dnas.{name} defers its import of dnas.{target} into a function"
    if target == "__init__":
      continue
    assert _layer(target) <= _layer(name), (
        f"dnas.{name} ({LAYERS[_layer(name)][0]}) imports dnas.{target} "
        f"({LAYERS[_layer(target)][0]}), a layer above it")


def test_no_import_cycles():
  graph = {m: {t for t, _ in IMPORTS[m]} for m in MODS}
  state = {}

  def visit(m, path):
    state[m] = "open"
    for t in graph[m]:
      if state.get(t) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path + [m, t]))
      if t not in state:
        visit(t, path + [m])
    state[m] = "done"
  for m in sorted(graph):
    if m not in state:
      visit(m, [])
