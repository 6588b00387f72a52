"""Runs many short entry-point commands, each in its own process forked from this one after
the libraries every entry point imports (JAX, Flax, Optax, Orbax, Grain, TFDS) are loaded:
each command then costs its own work, not 2-3 s of interpreter and library start-up.

python -m tests.forked_cli < cases.json, cases [[module, [args...]], ...]; prints one JSON
line, [[returncode, stdout, stderr], ...] in order. Each child runs its module as `python
-m module args` would (`runpy`, as __main__, its own flags), with this process's
environment; nothing of JAX's backends is started before the fork.
"""

import atexit
import json
import os
import runpy
import sys
import tempfile
import traceback

# The entry points' shared dependencies, not the entry modules: each defines its flags
# when it runs as __main__.
import dnas.cli  # noqa: F401  pylint: disable=unused-import
import dnas.search_lib  # noqa: F401  pylint: disable=unused-import
import dnas.train_lib  # noqa: F401  pylint: disable=unused-import


def _child(module, args, out_fd, err_fd):
  os.dup2(out_fd, 1)
  os.dup2(err_fd, 2)
  sys.argv = [module, *args]
  code = 0
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
      print(e.code, file=sys.stderr)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  atexit._run_exitfuncs()  # pylint: disable=protected-access  # as an interpreter's exit
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access  # not the parent's cleanup


def run(cases):
  results = []
  for module, args in cases:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      pid = os.fork()
      if pid == 0:
        _child(module, args, out.fileno(), err.fileno())
      _, status = os.waitpid(pid, 0)
      out.seek(0)
      err.seek(0)
      results.append((os.waitstatus_to_exitcode(status), out.read().decode(),
                      err.read().decode()))
  return results


if __name__ == "__main__":
  print(json.dumps(run(json.load(sys.stdin))))
