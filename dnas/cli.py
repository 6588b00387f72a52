"""Shared plumbing of the entry points: flag parsing, one-line errors, compile cache."""

import os
import sys

import filelock
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dnas import loop, parallel, utils
from dnas.config import ConfigError
from dnas.data.pipeline import DataError
from dnas.latency import LatencyError
from dnas.spaces.base import ArchError

USER_ERRORS = (ConfigError, DataError, ArchError, LatencyError)
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")

_COORDINATOR = flags.DEFINE_string(
    "coordinator", "", "Multi-host: host:port of process 0 (default: from the cluster "
    "environment, e.g. Slurm, TPU VMs or JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")


def fail(message) -> None:
  """A user mistake: one line on stderr, exit code 2."""
  first = str(message).strip().splitlines()[0] if str(message).strip() else repr(message)
  print(f"dnas: error: {first}", file=sys.stderr)
  sys.exit(2)


def _config_error(e: Exception) -> str:
  """One line for an error ml_collections raised while applying `--config.KEY=VALUE`."""
  overrides = " ".join(a for a in sys.argv[1:] if a.startswith("--config."))
  if isinstance(e, (AttributeError, KeyError)):  # an override of a key that does not exist
    return f"unknown config key {str(e).strip(chr(34)).strip(chr(39))} in {overrides}"
  return f"bad config override in {overrides}: {str(e).strip().splitlines()[-1]}"


def define_config_flag(default: str | None = DEFAULT_CONFIG, help: str = "Config file."):  # pylint: disable=redefined-builtin
  """`--config` (a locked ml_collections config file) with its `--config.KEY=VALUE`
  overrides; with `default=None` it is optional (its value None until given). ml_collections parses the overrides of the *default* config while the flag
  is being defined, at import, before `run` could catch anything: a bad override exits
  2 with one line here too."""
  try:
    return config_flags.DEFINE_config_file("config", default, help, lock_config=True)
  except (AttributeError, KeyError, ValueError, TypeError, flags.Error) as e:
    fail(_config_error(e))


def compilation_cache_dir() -> str:
  """Where every entry point keeps compiled programs: $DNAS_JAX_CACHE, by default
  ~/.cache/dnas/jax; "" when $DNAS_JAX_CACHE is set empty (no cache)."""
  return os.environ.get("DNAS_JAX_CACHE", os.path.expanduser("~/.cache/dnas/jax"))


# The compile cache's bound (the default search step's entry is 4.1 MB). With a bound JAX
# also locks the cache (`filelock`) while it reads or writes an entry; without one, a
# process could read another's half-written entry.
COMPILATION_CACHE_MAX_BYTES = 4 << 30


def enable_compilation_cache(path: str | None = None) -> None:
  """JAX's persistent compilation cache in `path` (default `compilation_cache_dir()`; ""
  none): a resumed run, or a rerun of a config in another work directory, loads its
  programs instead of compiling them (entries are keyed by the program, jax/jaxlib
  version and device). JAX caches programs that took at least
  $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS (1 s) to compile, and evicts the least
  recently used beyond $JAX_COMPILATION_CACHE_MAX_SIZE bytes (default
  `COMPILATION_CACHE_MAX_BYTES`). Every entry point, and every script that uses the
  cache, enables it here, so all of dnas's writers of a cache keep it bounded alike."""
  path = compilation_cache_dir() if path is None else path
  if path:
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
      jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    if jax.config.jax_compilation_cache_max_size > 0:
      drop_unfinished_cache_entries(path)


def drop_unfinished_cache_entries(path: str) -> list[str]:
  """Removes, under the cache's lock, the entries of a bounded compile cache in the local
  directory `path` that have no access time; -> their file names. JAX writes an entry,
  then its access time: a process killed between the two (or while writing the entry),
  or a writer without the bound (`JAX_COMPILATION_CACHE_MAX_SIZE=-1`, another program),
  leaves an entry without one, and then every later write to the cache fails (JAX's
  eviction reads each entry's access time) with a warning per program. Such an entry may
  also be truncated (JAX never replaces an entry): it is compiled again, once. Entries
  are the files JAX's eviction counts as such: every `*-cache` file."""
  dropped = []
  if "://" in path:  # JAX's remote caches (etils.epath) lock otherwise
    return dropped
  try:
    os.makedirs(path, exist_ok=True)
    with filelock.FileLock(os.path.join(path, ".lockfile"), timeout=10):  # JAX's lock
      names = set(os.listdir(path))
      for name in sorted(names):
        key = name[:-len("-cache")] if name.endswith("-cache") else None
        if key and f"{key}-atime" not in names and os.path.isfile(os.path.join(path, name)):
          try:
            os.remove(os.path.join(path, name))
            dropped.append(name)
          except OSError as e:
            logging.warning("could not remove the unfinished cache entry %s: %s", name, e)
  except (OSError, filelock.Timeout) as e:  # a busy or read-only cache: JAX warns on use
    logging.warning("could not check the compile cache %s: %s", path, e)
  return dropped


def run(main, commands: tuple[str, ...] = (), positional: bool = False,
        user_errors: tuple[type[Exception], ...] = ()) -> None:
  """Parses flags (errors exit 2 with one line), then calls main(argv); the user errors
  it raises exit 2 with one line. Bugs keep their tracebacks. With `commands`, exactly
  one of them must be given as the positional argument (argv[1]); with `positional`,
  main checks its positional arguments itself. `user_errors`: more exception types that
  are user mistakes."""
  app.define_help_flags()  # --help, --helpfull: absl's usage (the module docstring, flags)
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    fail(e)
  except SyntaxError as e:
    fail(f"config file {e.filename} line {e.lineno}: {e.msg}")
  except (AttributeError, KeyError) as e:  # ml_collections: override of a key that does not exist
    fail(_config_error(e))
  if commands:
    if len(argv) < 2 or argv[1] not in commands:
      fail(f"a command is required, one of: {', '.join(commands)}; got "
           f"{' '.join(argv[1:]) or 'none'}")
    if len(argv) > 2:
      fail(f"unexpected arguments: {' '.join(argv[2:])}")
  elif len(argv) > 1 and not positional:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
    try:  # config_flags defers a config file's load error until first use
      flags.FLAGS["config"].value.to_dict()
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[-1].strip()
      fail(f"cannot load config file {flags.FLAGS['config'].config_filename}: {reason}")
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  utils.configure_xla(deterministic=bool(config is not None and config.get("deterministic")))
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  enable_compilation_cache()
  try:
    main(argv)
  except USER_ERRORS + tuple(user_errors) as e:
    fail(e)
  except loop.Preempted as e:  # the scheduler's stop: checkpoint saved, 128 + SIGTERM
    print(f"dnas: {e}", file=sys.stderr)
    sys.exit(143)
  except loop.NonFiniteError as e:
    print(f"dnas: error: {e}", file=sys.stderr)
    sys.exit(1)
