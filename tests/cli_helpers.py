"""Running the entry points as a user does, in subprocesses, for the CLI, resume and
multi-host tests."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "dnas", "configs", "tiny.py")
# The tiny config with four kinds of op (compiles in a third of the time), 2 epochs of 3
# steps and a checkpoint after every step.
FAST = [f"--config={TINY}", "--config.search.epochs=2", "--config.checkpoint.every_steps=1",
        "--config.model.primitives=('none','max_pool_3x3','skip_connect','sep_conv_3x3')",
        "--progress=false"]


def env(cache=None, **extra):
  """The subprocess environment: CPU, and the test session's compile cache (conftest.py)
  unless `cache` names another ("" turns it off). The cache keeps every program: at the
  suite's XLA optimisation level 0 most compile in under JAX's 1 s threshold for caching,
  and the many runs of the same tiny configs would compile them again."""
  if cache is None:
    cache = os.environ.get("DNAS_TEST_JAX_CACHE", "")
  return dict(os.environ, JAX_PLATFORMS="cpu", DNAS_JAX_CACHE=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)


def optimised():
  """`extra_env` for a subprocess that runs much more than it compiles (conftest.py
  compiles at XLA's optimisation level 0): XLA's default flags."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  return {"XLA_FLAGS": " ".join(f for f in flags if f not in TEST_XLA_FLAGS)}


def run(module, *args, cache=None, timeout=600, extra_env=None):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env=env(cache, **(extra_env or {})), capture_output=True, text=True,
                        timeout=timeout)


def run_forked(cases, cache=None, timeout=600):
  """[(returncode, stdout, stderr)] of the commands `cases` [(module, [args])], each in a
  process forked after the libraries are imported (tests/forked_cli.py): for many short
  commands, such as the ones that stop at a user error."""
  out = subprocess.run([sys.executable, "-m", "tests.forked_cli"], cwd=ROOT, env=env(cache),
                       input=json.dumps(cases), capture_output=True, text=True,
                       timeout=timeout, check=False)
  assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]  # the imports say nothing
  return [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def start(module, *args, cache=None, extra_env=None):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=env(cache, **(extra_env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, proc, timeout=300, subdir="checkpoints"):
  ckpts = os.path.join(workdir, subdir)
  t = time.time()
  while time.time() - t < timeout:
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  raise TimeoutError("no checkpoint appeared")


def read_checkpoint(path):
  """The arrays of a saved state, as numpy (the saving run may have had other devices)."""
  with ocp.PyTreeCheckpointer() as c:
    tree = c.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = c.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def final(workdir):
  """(step, arrays of the newest checkpoint, genotype dict, metric records without wall
  times) of a search work directory."""
  ckpts = os.path.join(workdir, "checkpoints")
  last = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  leaves = read_checkpoint(os.path.join(ckpts, str(last), "state"))
  with open(os.path.join(workdir, "genotype.json")) as f:
    genotype = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  for r in records:
    del r["wall_time"]
  return last, leaves, genotype, records


def assert_same_run(a, b, steps=6):
  (step_a, leaves_a, g_a, rec_a), (step_b, leaves_b, g_b, rec_b) = a, b
  assert step_a == step_b == steps
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and np.array_equal(x, y)  # bitwise
  assert g_a == g_b
  assert rec_a == rec_b
