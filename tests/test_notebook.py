"""colab/quickstart.ipynb: stored with the outputs of its CPU run, executed headless on CPU
(nbclient) with its tiny configuration switched on by an injected parameter cell, as
papermill does, and its Colab guards (no REPO_URL, a JAX that misses the accelerator)."""

import importlib.util
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests import cli_helpers

NOTEBOOK = os.path.join(cli_helpers.ROOT, "colab", "quickstart.ipynb")


def _code(nb, startswith: str) -> str:
  return next(c.source for c in nb.cells
              if c.cell_type == "code" and c.source.startswith(startswith))


def test_notebook_is_stored_with_the_outputs_of_its_cpu_run():
  # A reader on the web sees what a run gives: every code cell ran, in order, without an
  # error, with its default parameters (the digits default, not the tiny test config).
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  assert not any(o.output_type == "error" for c in code for o in c.outputs)
  text = "".join(o.get("text", "") for c in code for o in c.outputs)
  assert "backend cpu" in text and "digits | search: 8 epochs" in text
  assert "test accuracy" in text and "ms per batch" in text
  assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) == 3
  assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_notebook_without_dnas_or_repo_url_says_what_to_set(monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "dnas" else real(name, *a))
  scope = {}
  exec(_code(nb, "# Parameters"), scope)  # pylint: disable=exec-used
  assert scope["REPO_URL"] == ""
  with pytest.raises(RuntimeError, match="set REPO_URL in the parameters cell"):
    exec(_code(nb, "import importlib.util"), scope)  # pylint: disable=exec-used


@pytest.mark.parametrize("env,fix", [("TPU_ACCELERATOR_TYPE", "jax\\[tpu\\]"),
                                     ("COLAB_TPU_ADDR", "jax\\[tpu\\]")])
def test_notebook_stops_when_jax_misses_the_runtimes_accelerator(monkeypatch, env, fix):
  # A TPU runtime whose JAX runs on the CPU (pip replaced Colab's jax) stops with the fix.
  nb = nbformat.read(NOTEBOOK, as_version=4)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  scope = {}
  exec(_code(nb, "# Parameters"), scope)  # pylint: disable=exec-used
  exec(_code(nb, "import importlib.util"), scope)  # dnas is installed: defines accelerator()
  assert scope["accelerator"]() == "cpu"
  monkeypatch.setenv(env, "v2-8")
  assert scope["accelerator"]() == "tpu"
  with pytest.raises(RuntimeError, match=f"has a TPU, but JAX runs on cpu: pip install -U '{fix}'"):
    exec(_code(nb, "import jax"), scope)  # pylint: disable=exec-used


def test_notebook_runs_headless(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # the stored outputs are not this run's
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  nb.cells.insert(i + 1, nbformat.v4.new_code_cell(
      f"TINY = True\nWORKDIR = {str(tmp_path / 'run')!r}\nRETRAIN_EPOCHS = 1"))
  # The kernel is this interpreter, on the CPU.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["backend"] == "cpu" and summary["devices"] >= 1
  assert 0.0 <= summary["test_acc"] <= 1.0 and summary["latency_ms"] > 0
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
  assert "backend cpu" in outputs and "test accuracy" in outputs
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
  assert images == 3  # the alphas plot and the two cells
