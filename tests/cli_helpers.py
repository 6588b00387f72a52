"""Running the entry points as a user does, in subprocesses, for the CLI, resume and
multi-host tests."""

import atexit
import json
import os
import subprocess
import sys
import tempfile
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


class _ForkServer:
  """One `python -m tests.forked_cli --serve` per test process, started on first use with
  the default subprocess environment `env()`: the commands run with that environment
  fork from it instead of starting Python and importing JAX, Flax and dnas again."""

  def __init__(self):
    self.env = env()
    self.log = tempfile.TemporaryFile("w+")
    self.proc = subprocess.Popen([sys.executable, "-m", "tests.forked_cli", "--serve"],
                                 cwd=ROOT, env=self.env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.log, text=True)
    ready = self.proc.stdout.readline()
    self.log.seek(0)
    # The imports say nothing (a child's output is its own).
    assert ready == "ready\n" and not self.log.read(), self._stderr()
    atexit.register(self.close)

  def _stderr(self):
    self.log.seek(0)
    return self.log.read()[-3000:]

  def run(self, cmd, timeout, **request):
    try:
      self.proc.stdin.write(json.dumps(dict(request, timeout=timeout)) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except BaseException:  # interrupted: its answer must not become the next command's
      self.proc.kill()
      raise
    assert line, self._stderr()  # the server died: its traceback
    code, out, err = json.loads(line)
    if code is None:
      raise subprocess.TimeoutExpired(cmd, timeout, out, err)
    return subprocess.CompletedProcess(cmd, code, out, err)

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


_server = None


def _same(a, b):
  # pytest names the running test in the environment; nothing reads it at import.
  def drop(e):
    return {k: v for k, v in e.items() if k != "PYTEST_CURRENT_TEST"}
  return drop(a) == drop(b)


def _forked(cmd, timeout, environment, **request):
  """`cmd`'s CompletedProcess from this process's fork server when `environment` is the
  default one, `env()` (the usual case; a server is started, or restarted if the default
  changed); None otherwise (the caller starts a process). The child runs with
  `environment`."""
  global _server  # pylint: disable=global-statement
  if not _same(environment, env()):
    return None
  if _server is None or _server.proc.poll() is not None or not _same(environment, _server.env):
    if _server is not None:
      _server.close()
    _server = _ForkServer()
  return _server.run(cmd, timeout, env=environment, **request)


def run(module, *args, cache=None, timeout=600, extra_env=None, new_process=False):
  """`python -m module args` in ROOT with `env(cache, **extra_env)`, captured; forked from
  the fork server (tests/forked_cli.py) where the environment is the default, unless
  `new_process` (then a process of its own: its own start-up and hash seed, for the
  reference side of a bitwise comparison of two runs)."""
  cmd, environment = [sys.executable, "-m", module, *args], env(cache, **(extra_env or {}))
  return ((not new_process and _forked(cmd, timeout, environment, module=module,
                                       args=list(args)))
          or subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=timeout))


def run_script(path, *args, timeout=600):
  """`python path args` (a file under ROOT) in ROOT with `env()`, captured; forked from
  the fork server."""
  cmd, environment = [sys.executable, path, *args], env()
  return _forked(cmd, timeout, environment, path=path, args=list(args)) or subprocess.run(
      cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)


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
  """The arrays of a saved state (a step directory), as numpy (the saving run may have had
  other devices): its stacks of leaves (`packed`), or the tree of checkpoints written
  before the stacking (`state`)."""
  path = os.path.join(path, "packed" if os.path.isdir(os.path.join(path, "packed")) else "state")
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
  leaves = read_checkpoint(os.path.join(ckpts, str(last)))
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
