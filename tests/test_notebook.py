"""colab/quickstart.ipynb executed headless on CPU (nbclient), with its tiny
configuration switched on by an injected parameter cell, as papermill does."""

import json
import os
import sys

import nbformat
from nbclient import NotebookClient

from tests import cli_helpers

NOTEBOOK = os.path.join(cli_helpers.ROOT, "colab", "quickstart.ipynb")


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None
  assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_notebook_runs_headless(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
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
