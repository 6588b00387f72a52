"""README.md's quickstart runs as printed and learns."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart() -> str:
  readme = open(os.path.join(ROOT, "README.md")).read()
  section = readme[readme.index("## Quickstart"):readme.index("## Two commands")]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1, "the quickstart section holds one Python block"
  return blocks[0]


def test_readme_quickstart_runs_and_learns(tmp_path):
  out = subprocess.run([sys.executable, "-c", _quickstart()], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  acc = float(re.search(r"architecture-split accuracy ([0-9.]+)", out.stdout).group(1))
  # 200 first-order steps of batch 64 on the digits' weight half reach ~0.95 on a batch
  # of the architecture half (seeded); chance is 0.1. 0.6 leaves room for backend
  # numerics while failing any step that does not train.
  assert acc >= 0.6, out.stdout
