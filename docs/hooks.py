"""mkdocs hooks: pages generated from the code, and the repository files the pages link to.

- `<!-- dnas:readme -->` (the home page) becomes README.md.
- `<!-- dnas:config-reference -->` becomes every field of `dnas/configs/base.py`: each
  section's comment as written there and its fields with their defaults, read from the
  file itself and from `get_config()`, so the page cannot drift from the code.
- `<!-- dnas:cli-reference -->` becomes every entry point's flags, read from the
  `flags.DEFINE_*` calls of its module.
- BUILD_NOTES.md, CHANGELOG.md and the files under experiments/, scripts/, colab/ and
  dnas/configs/ are added to the site at their repository paths, so that a link from a
  page (written relative to docs/ to work on GitHub too: `../experiments/x.png`) or from
  BUILD_NOTES.md resolves, and `mkdocs build --strict` fails on any that does not.
"""

import ast
import io
import os
import re
import sys
import tokenize

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_REPO_FILES = ("BUILD_NOTES.md", "CHANGELOG.md", "LICENSE", "CITATION.cff")
_REPO_DIRS = ("experiments", "scripts", "colab", os.path.join("dnas", "configs"))
_SKIP = (".pyc", ".ipynb_checkpoints")

# (module, how it is run) of every entry point, in the order a user meets them.
ENTRY_POINTS = (
    ("dnas/search.py", "python -m dnas.search"),
    ("dnas/train.py", "python -m dnas.train"),
    ("dnas/plot.py", "python -m dnas.plot GENOTYPE"),
    ("dnas/export.py", "python -m dnas.export"),
    ("dnas/latency/__main__.py", "python -m dnas.latency profile|calibrate|predict"),
    ("dnas/evaluate.py", "python -m dnas.evaluate"),
    ("dnas/data/prepare.py", "python -m dnas.data.prepare NAME"),
)


def on_files(files, config):
  """Adds the repository files that pages link to."""
  paths = [p for p in _REPO_FILES if os.path.exists(os.path.join(ROOT, p))]
  for top in _REPO_DIRS:
    for dirpath, dirnames, names in os.walk(os.path.join(ROOT, top)):
      dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
      paths += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in sorted(names)
                if not n.endswith(_SKIP)]
  for path in paths:
    files.append(File(path, ROOT, config["site_dir"], config["use_directory_urls"]))
  return files


def on_page_markdown(markdown, page, config, files):
  if page.file.abs_src_path and os.path.dirname(page.file.abs_src_path) == os.path.join(
      ROOT, "docs"):
    # docs/x.md links to ../experiments/y (right on GitHub); in the site x.md sits at the
    # root beside experiments/.
    markdown = re.sub(r"\]\(\.\./", "](", markdown)
  if "<!-- dnas:readme -->" in markdown:
    # The home page is README.md, its links to docs/x.md made the site's x.md.
    readme = open(os.path.join(ROOT, "README.md")).read()
    markdown = markdown.replace("<!-- dnas:readme -->", re.sub(r"\]\(docs/", "](", readme))
  markdown = markdown.replace("<!-- dnas:config-reference -->", config_reference())
  return markdown.replace("<!-- dnas:cli-reference -->", cli_reference())


# --- config reference --------------------------------------------------------------------


def _comments(source: str) -> dict[int, str]:
  """{line number: comment text} of every comment in `source`."""
  out = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip("#").strip()
      out[tok.start[0]] = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
  return out


def _sections(path: str):
  """Yields (name, comment, is_dict) for each `c.NAME = ...` of `get_config` in `path`."""
  source = open(path).read()
  comments = _comments(source)
  fn = next(n for n in ast.parse(source).body
            if isinstance(n, ast.FunctionDef) and n.name == "get_config")
  prev_end = fn.lineno
  for stmt in fn.body:
    if (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Attribute)
        and isinstance(stmt.targets[0].value, ast.Name) and stmt.targets[0].value.id == "c"):
      lines = [comments[i] for i in range(prev_end + 1, stmt.end_lineno + 1) if i in comments]
      yield stmt.targets[0].attr, " ".join(lines), isinstance(stmt.value, ast.Call)
    prev_end = stmt.end_lineno


def _value(v) -> str:
  text = repr(v.to_dict() if hasattr(v, "to_dict") else v)
  return "`" + (text if len(text) < 90 else text[:87] + "...") + "`"


def config_reference() -> str:
  sys.path.insert(0, ROOT)
  try:
    from dnas.configs import base  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = base.get_config()
  out = []
  plain = [(n, c) for n, c, is_dict in _sections(base.__file__) if not is_dict]
  out += ["### Top-level fields", "", "| field | default | meaning |", "|---|---|---|"]
  out += [f"| `{n}` | {_value(config[n])} | {c} |" for n, c in plain]
  for name, comment, is_dict in _sections(base.__file__):
    if not is_dict:
      continue
    out += ["", f"### `{name}`", "", comment, "", "| field | default |", "|---|---|"]
    out += [f"| `{name}.{k}` | {_value(v)} |" for k, v in config[name].items()]
  return "\n".join(out)


# --- CLI reference -----------------------------------------------------------------------


def _escape(text: str) -> str:
  return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _literal(node) -> str:
  try:
    return repr(ast.literal_eval(node))
  except ValueError:
    return ast.unparse(node)


def _flags(path: str):
  """Yields (name, default, help) of each `flags.DEFINE_*` and `cli.define_config_flag`
  call in the module at `path`."""
  for node in ast.walk(ast.parse(open(path).read())):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
      continue
    attr = node.func.attr
    if attr.startswith("DEFINE_") and attr != "DEFINE_config_file" and len(node.args) >= 3:
      help_ = node.args[2]
      yield (ast.literal_eval(node.args[0]), _literal(node.args[1]),
             help_.value if isinstance(help_, ast.Constant) else ast.unparse(help_))
    elif attr == "define_config_flag":
      default = _literal(node.args[0]) if node.args else "dnas/configs/digits.py"
      default = "dnas/configs/digits.py" if default == "DEFAULT_CONFIG" else default
      yield "config", default, ("Config file (`dnas/configs/*.py`); override any field with "
                                "`--config.SECTION.FIELD=VALUE`.")


def cli_reference() -> str:
  shared = list(_flags(os.path.join(ROOT, "dnas", "cli.py")))
  out = []
  for module, usage in ENTRY_POINTS:
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, module)).read())) or ""
    out += [f"### `{usage}`", "", doc.split("\n\n")[0], "", "| flag | default | meaning |",
            "|---|---|---|"]
    out += [f"| `--{n}` | `{d}` | {_escape(h)} |" for n, d, h in _flags(os.path.join(ROOT, module))]
    out.append("")
  out += ["### Every entry point", "", "| flag | default | meaning |", "|---|---|---|"]
  out += [f"| `--{n}` | `{d}` | {_escape(h)} |" for n, d, h in shared]
  return "\n".join(out)
