"""Runs entry-point commands and scripts, each in its own process forked from this one after
the libraries they import (JAX, Flax, Optax, Orbax, Grain, TFDS, dnas) are loaded: each
command then costs its own work, not 2-3 s of interpreter and library start-up.

Each child runs its module as `python -m module args` would (`runpy`, as __main__, its own
flags, atexit handlers, exit code) or a script as `python path args` would, with the
request's environment (tests/cli_helpers.py sends only the one this process started with,
but for pytest's name of the running test) and a closed stdin; nothing of JAX's backends
is started before the fork, and no thread (checked before every fork).

`python -m tests.forked_cli --serve` prints "ready" once its imports are done, then reads
one request per line, {"module" or "path", "args", "timeout", "env"}, and answers each
with one JSON line, [returncode, stdout, stderr] (returncode null: killed at the
timeout). tests/cli_helpers.py keeps one per test process.
"""

import atexit
import json
import os
import runpy
import signal
import sys
import tempfile
import threading
import time
import traceback

from jax._src import xla_bridge

# The entry points' shared dependencies, not the entry modules: each defines its flags
# when it runs as __main__.
import dnas.benchmarks.nb201_digits  # noqa: F401  pylint: disable=unused-import
import dnas.cli  # noqa: F401  pylint: disable=unused-import
import dnas.deploy.onnx  # noqa: F401  pylint: disable=unused-import
import dnas.deploy.runtimes  # noqa: F401  pylint: disable=unused-import
import dnas.search_lib  # noqa: F401  pylint: disable=unused-import
import dnas.train_lib  # noqa: F401  pylint: disable=unused-import


def _child(module, path, args, out_fd, err_fd, env=None):
  if env is not None:
    os.environ.clear()
    os.environ.update(env)
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  os.dup2(out_fd, 1)
  os.dup2(err_fd, 2)
  code = 0
  try:
    if path is not None:
      sys.argv = [path, *args]
      sys.path[0] = os.path.dirname(os.path.abspath(path))  # as `python path` sets it
      runpy.run_path(os.path.abspath(path), run_name="__main__")  # __file__ absolute
    else:
      sys.argv = [module, *args]
      runpy.run_module(module, run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  # As an interpreter's exit: join the other non-daemon threads, then the atexit handlers.
  threading._shutdown()  # pylint: disable=protected-access
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access  # not the parent's cleanup


def run_one(module=None, path=None, args=(), timeout=None, env=None):
  """(returncode, stdout, stderr) of one command in a forked child with environment `env`
  (default this process's); returncode None when it ran past `timeout` seconds and was
  killed."""
  # Forking a process with XLA's thread pools (or any thread) running is unsafe.
  assert not xla_bridge.backends_are_initialized() and threading.active_count() == 1
  sys.stdout.flush()
  sys.stderr.flush()
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    pid = os.fork()
    if pid == 0:
      _child(module, path, list(args), out.fileno(), err.fileno(), env)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
      done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
      if done:
        code = os.waitstatus_to_exitcode(status)
        break
      if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        code = None
        break
      time.sleep(0.02)
    out.seek(0)
    err.seek(0)
    return code, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def serve(requests, answers):
  for line in requests:
    if line.strip():
      answers.write(json.dumps(run_one(**json.loads(line))) + "\n")
      answers.flush()


if __name__ == "__main__":
  assert sys.argv[1:] == ["--serve"], sys.argv
  print("ready", flush=True)
  serve(sys.stdin, sys.stdout)
