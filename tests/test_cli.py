"""The entry points as a user runs them: a tiny search whose genotype dnas.train accepts,
and user mistakes that exit 2 with one line and no traceback."""

import json
import os

import pytest

from dnas.spaces import darts
from tests import cli_helpers

TINY = cli_helpers.TINY
FAST_OPS = "--config.model.primitives=('none','max_pool_3x3','avg_pool_3x3','skip_connect','dil_conv_3x3')"


def _run(module, *args, cache=None, timeout=600):
  return cli_helpers.run(module, *args, "--progress=false", cache=cache or "", timeout=timeout)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("search")
  out = _run("dnas.search", f"--config={TINY}", f"--workdir={workdir}",
             "--config.search.epochs=2", FAST_OPS, cache=str(tmp_path_factory.mktemp("cache")))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_search_writes_genotype_metrics_and_plot(searched):
  g = darts.load_genotype(searched / "genotype.json")
  assert len(g.normal) == 4 and g.normal_concat == (2, 3)  # tiny: steps=2, multiplier=2
  records = [json.loads(l) for l in (searched / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1]
  for key in ("w_loss", "w_acc", "a_loss", "a_acc", "valid_acc", "alpha_entropy_normal",
              "alpha_entropy_reduce", "genotype", "wall_time", "lr"):
    assert key in records[-1]
  assert darts.Genotype.from_dict(records[-1]["genotype"]) == g
  assert (searched / "alphas.png").stat().st_size > 10_000


def test_train_accepts_searched_genotype(searched, tmp_path):
  out = _run("dnas.train", f"--config={TINY}", f"--genotype={searched / 'genotype.json'}",
             f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "train_result.json").read_text())
  assert 0.0 <= result["test_acc"] <= 1.0 and result["params"] > 0
  assert os.path.isdir(result["checkpoint"])


@pytest.mark.parametrize("module,args,message", [
    ("dnas.search", ["--config.search.w_lr=0"], "search.w_lr must be a positive number, got 0"),
    ("dnas.search", ["--config.search.a_lr=-1"], "search.a_lr must be a positive number, got -1"),
    ("dnas.search", ["--config.search.epochs=0"], "search.epochs must be a positive integer, got 0"),
    ("dnas.search", ["--config.search.order=third"], "search.order 'third' is unknown"),
    ("dnas.search", ["--config.search.nope=1"], "nope"),
    ("dnas.search", ["--config.model.primitives=('max_pool_3x3','conv_9x9')"],
     "unknown op 'conv_9x9'; valid ops: none, max_pool_3x3"),
    ("dnas.search", ["--config.data.name=mnist"], "data.name 'mnist' is unknown"),
    ("dnas.search", ["--config.dtype=float16"],
     "dtype 'float16' is unknown; valid: float32, bfloat16"),
    ("dnas.search", ["--config.data.name=cifar10", "--config.data.data_dir=/nonexistent"],
     "data set 'cifar10' (cifar10) is not prepared in /nonexistent: run python -m "
     "dnas.data.prepare cifar10 --data_dir=/nonexistent"),
    ("dnas.search", ["--config=does/not/exist.py"], "exist.py"),
    ("dnas.train", ["--genotype=/nonexistent/genotype.json"], "cannot read genotype file"),
    ("dnas.train", ["--config.train.epochs=-3", "--genotype=x.json"],
     "train.epochs must be a positive integer, got -3"),
    ("dnas.train", [], "--genotype is required"),
])
def test_user_errors_exit_2_with_one_line(module, args, message):
  out = _run(module, f"--config={TINY}", *args) if not any(
      a.startswith("--config=") for a in args) else _run(module, *args)
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("dnas: error: "), out.stderr[-2000:]
  assert message in lines[0]
  assert "Traceback" not in out.stderr


def test_bad_genotype_file_exits_2(tmp_path):
  bad = tmp_path / "g.json"
  d = darts.DARTS_V2.to_dict()
  d["normal"][3] = ["sep_conv_3x3", 4]
  bad.write_text(json.dumps(d))
  out = _run("dnas.train", f"--config={TINY}", f"--genotype={bad}")
  assert out.returncode == 2
  assert out.stderr.strip() == (f"dnas: error: {bad}: normal edge 3: node 3 cannot read state 4; "
                                f"allowed inputs are 0..2")
