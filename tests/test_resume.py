"""No search is lost: real subprocesses killed with SIGKILL or stopped with SIGTERM, then
resumed, end bitwise equal to an uninterrupted run; the same seed gives the same run."""

import json
import os
import random
import signal
import time

import numpy as np
import pytest

from dnas.spaces import darts
from tests.cli_helpers import (FAST, TINY, assert_same_run, final, read_checkpoint, run,
                               start, wait_for_checkpoint)


def _search(workdir, *extra):
  return run("dnas.search", *FAST, f"--workdir={workdir}", *extra)


@pytest.fixture(scope="module")
def uninterrupted_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = _search(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  # The epochs' ends call nothing that was not compiled (or loaded) ahead, beside the step.
  lines = [l for l in out.stderr.splitlines() if l.startswith("dnas: ") and "the evaluation"
           in l]
  assert len(lines) == 1 and lines[0].endswith(" in the background"), out.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir):
  return final(uninterrupted_dir)


# Same seed, same search: the SIGKILL and SIGTERM tests run the search in two processes
# (the SIGTERM lands before the first step ends, so the second process runs 5 of the 6
# steps) and compare with the uninterrupted run bitwise, which no nondeterministic search
# would pass.


def test_resume_false_refuses_an_existing_run(uninterrupted_dir):
  out = _search(uninterrupted_dir, "--resume=false")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      f"dnas: error: --workdir {uninterrupted_dir} already holds a search run with "
      f"checkpoints; rerun with --resume to continue it, or choose another --workdir"]
  out = _search(uninterrupted_dir, "--config.max_steps_per_epoch=2")
  assert out.returncode == 2
  assert "another config (max_steps_per_epoch: 3 there, 2 now)" in out.stderr


def _wait_for_step(workdir, proc, step, timeout=300):
  ckpts = os.path.join(workdir, "checkpoints")
  t = time.time()
  while time.time() - t < timeout:
    if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= step for d in os.listdir(ckpts)):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  raise TimeoutError(f"no checkpoint of step {step} appeared")


def test_search_sigterm_then_sigkill_each_resume_bitwise_and_load_their_programs(
    tmp_path, uninterrupted):
  # SIGTERM once the search has started (its config written, before the first step
  # compiled): the run answers it after that step with a checkpoint and exit code 143.
  # The resumed run is SIGKILLed after a random one of the remaining steps' checkpoints
  # (while the next step and its checkpoint run). Resumed again, it ends as the
  # uninterrupted run does, bitwise; each resumed run loads the search step the first
  # compiled (and traced) from the persistent compile cache, as does a rerun of the same
  # config in another work directory.
  cache, workdir = tmp_path / "cache", tmp_path / "run"

  def search(directory=workdir):
    return start("dnas.search", *FAST, f"--workdir={directory}", cache=cache)
  proc, t = search(), time.time()
  while not (workdir / "search_config.json").exists():
    assert proc.poll() is None and time.time() - t < 300, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 143, err[-3000:]
  assert "SIGTERM: saved checkpoint" in err
  ckpts = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert ckpts and max(ckpts) < 6
  proc = search()
  _wait_for_step(workdir, proc, random.randint(min(max(ckpts) + 1, 5), 5))
  assert proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate()
  assert "dnas: loaded the search step from the compile cache" in err, err[-3000:]
  out = run("dnas.search", *FAST, f"--workdir={workdir}", cache=cache)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "dnas: resuming" in out.stderr
  assert "dnas: loaded the search step from the compile cache" in out.stderr, out.stderr
  assert_same_run(final(workdir), uninterrupted)
  out = run("dnas.search", *FAST, f"--workdir={tmp_path / 'other'}", cache=cache)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "dnas: loaded the search step from the compile cache" in out.stderr, out.stderr
  assert "dnas: compiled the search step" not in out.stderr
  # The runs kept the traces (`dnas.trace_cache`) of the search step and the evaluation,
  # one each: every later run called them under the same keys, and the resumed run ended
  # bitwise as the uninterrupted run.
  assert len(os.listdir(cache / "dnas-traces")) == 2


def test_non_finite_loss_stops_naming_step_and_phase(tmp_path):
  # A huge learning rate makes the weights overflow in the first weight step.
  out = _search(tmp_path, "--config.search.w_lr=1e38", "--config.search.w_lr_min=0",
                "--config.search.grad_clip=0")
  assert out.returncode == 1, out.stderr[-3000:]
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith("dnas: error: non-finite ") and "step of step " in line, line
  assert "Traceback" not in out.stderr
  failed = int(line.split("step of step ")[1].split(";")[0])
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == list(range(1, failed))  # every good step, nothing after them


def _final_train(workdir):
  """(step, arrays of the newest retraining checkpoint, metric records, test loss and
  accuracy) of a `dnas.train` work directory."""
  ckpts = os.path.join(workdir, "train_checkpoints")
  last = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  leaves = read_checkpoint(os.path.join(ckpts, str(last)))
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  for r in records:
    del r["wall_time"]
  with open(os.path.join(workdir, "train_result.json")) as f:
    result = json.load(f)
  return last, leaves, records, (result["test_loss"], result["test_acc"])


def test_retraining_sigkill_then_resume_is_bitwise_equal(tmp_path):
  genotype = tmp_path / "genotype.json"
  darts.save_genotype(darts.DARTS_V2, str(genotype))
  args = [f"--config={TINY}", f"--genotype={genotype}", "--config.train.epochs=2",
          "--config.checkpoint.every_steps=1", "--progress=false"]
  out = run("dnas.train", *args, f"--workdir={tmp_path / 'a'}", new_process=True)
  assert out.returncode == 0, out.stderr[-3000:]
  proc = start("dnas.train", *args, f"--workdir={tmp_path / 'b'}")
  wait_for_checkpoint(tmp_path / "b", proc, subdir="train_checkpoints")
  time.sleep(random.uniform(0.0, 2.0))
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  out = run("dnas.train", *args, f"--workdir={tmp_path / 'b'}")
  assert out.returncode == 0, out.stderr[-3000:]
  (step_a, leaves_a, rec_a, test_a), (step_b, leaves_b, rec_b, test_b) = (
      _final_train(tmp_path / "a"), _final_train(tmp_path / "b"))
  assert step_a == step_b and len(leaves_a) == len(leaves_b) and rec_a == rec_b
  for x, y in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and np.array_equal(x, y)  # bitwise
  assert test_a == test_b


def test_keys_added_after_a_run_count_as_unchanged_at_their_defaults(tmp_path):
  # A run saved before `latency.limit_ms` existed resumes while the key holds its
  # default (the behaviour the run had), and is refused when it is set.
  from dnas import loop  # pylint: disable=g-import-not-at-top
  from dnas.config import ConfigError  # pylint: disable=g-import-not-at-top
  from dnas.configs import nb201  # pylint: disable=g-import-not-at-top
  config = nb201.get_config()
  saved = json.loads(config.to_json())
  del saved["latency"]["limit_ms"]
  (tmp_path / "search_config.json").write_text(json.dumps(saved))
  loop.prepare_workdir(str(tmp_path), config, resume=True, has_checkpoint=True, what="search")
  (tmp_path / "search_config.json").write_text(json.dumps(saved))
  config.latency.limit_ms = 3.0
  with pytest.raises(ConfigError, match=r"another config \(latency.limit_ms: None there, "
                     r"3.0 now\)"):
    loop.prepare_workdir(str(tmp_path), config, resume=True, has_checkpoint=True,
                         what="search")
