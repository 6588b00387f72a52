"""Traces kept on disk: a jitted program that a later process lowers without tracing.

JAX's persistent compilation cache keeps what XLA compiled, but every process still
traces and lowers the program before it can look there: 16 s of the default search's
warm start, 19 s at CIFAR-10 shapes (BUILD_NOTES.md, "Compile time"). `cached_jit` keeps
the lowered program (`jax.export`, serialized StableHLO) in `dnas-traces/` inside the
compilation cache's directory, and a process that finds it there calls it instead of
tracing (`Exported.call`). Its key is the caller's name for the program (what it
computes: the config) with everything else a trace can depend on: the arguments'
structure, shapes and dtypes, the jit's shardings and donation, the backend and its
devices, JAX's configuration, the version of every installed distribution, and the
source of dnas and of every other loaded module outside the standard library and
site-packages (the user's own spaces and scripts). Turning the compilation cache off
($DNAS_JAX_CACHE="") turns this off too.
"""

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import sysconfig
import tempfile
import time

import jax

# Entries kept (the least recently used are removed beyond it); the default search's
# step is 3.1 MB.
MAX_ENTRIES = 32
SUBDIR = "dnas-traces"


def directory() -> str | None:
  """Where traces are kept: `dnas-traces` in JAX's persistent compilation cache's local
  directory; None when that cache is off or not a local directory, or in an interactive
  session (`interactive`)."""
  path = jax.config.jax_compilation_cache_dir
  if not path or "://" in path or interactive():
    return None
  return os.path.join(path, SUBDIR)


def interactive() -> bool:
  """Whether the main program has no file (a notebook, a REPL, `python -c`): code
  defined there (a space in a notebook cell) has no source to key a trace on."""
  return getattr(sys.modules.get("__main__"), "__file__", None) is None


def cached_jit(fn, key: str | None, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)`, whose trace a later process loads from `directory()`.

  `key`: what `fn` computes beyond its code and arguments (a config, a table), as a
  string; None: a plain `jax.jit`. The returned function traces (once per argument
  signature and process, as any `jax.jit`) into either a call of the stored program or,
  when none is stored, a call of the program it exports and stores for the next process.
  The results must be a tree of lists, tuples and dicts (`jax.export` serializes no
  other node types; the arguments may be any tree). A program that `jax.export`
  refuses (another node type in the results, a custom call without compatibility
  guarantees) is traced as without the cache, with a warning. When the stored program
  is called, `fn`'s Python body does not run (no trace-time side effects), and the
  result is for calling: it is not differentiated or vmapped (the stored program has
  no derivative rules)."""
  if key is None:
    return jax.jit(fn, **jit_kwargs)
  unsupported = set(jit_kwargs) - {"donate_argnums", "in_shardings", "out_shardings"}
  if unsupported:
    raise ValueError(f"cached_jit takes donate_argnums, in_shardings and out_shardings; "
                     f"got {', '.join(sorted(unsupported))}")
  options = _without_addresses(repr(sorted(jit_kwargs.items())))

  @functools.wraps(fn)
  def program(*args):
    where = directory()
    if where is None:
      return fn(*args)
    # Exported over the arguments' leaves: `jax.export` serializes the tree of
    # arguments, which may hold node types it cannot (a Flax state's).
    leaves, in_tree = jax.tree.flatten(args)
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.aval.weak_type)
             for x in leaves]
    platform = jax.export.default_export_platform()
    avals = [(x.shape, str(x.dtype), x.weak_type) for x in specs]
    signature = _without_addresses(f"{in_tree} {avals}")
    before = _user_sources()
    path = os.path.join(where, _digest(key, options, platform, signature,
                                       fingerprint(before)) + ".exported")
    exported = _load(path)
    if exported is None:
      try:
        flat = jax.jit(lambda *leaves: fn(*in_tree.unflatten(leaves)),
                       **_flat_options(jit_kwargs, args))
        exported = jax.export.export(flat, platforms=(platform,))(*specs)
        data = exported.serialize()
      except Exception as e:  # pylint: disable=broad-except
        out = fn(*args)  # an error of fn's own is raised here, as without the cache
        logging.warning("dnas: %s is traced in every process (jax.export: %s)",
                        getattr(fn, "__name__", "a program"),
                        (str(e).splitlines() or [repr(e)])[0])
        return out
      # The user's modules that the trace imported are not in the key (it was made
      # before): the entry lists them, and a reader checks them (`_load`).
      _store(path, data, {p: d for p, d in _user_sources().items() if p not in before})
    return exported.call(*leaves)

  return jax.jit(program, **jit_kwargs)


def _flat_options(jit_kwargs: dict, args: tuple) -> dict:
  """The jit's shardings for the function of the arguments' leaves (donation stays with
  the outer jit, which owns the buffers)."""
  kwargs = {k: v for k, v in jit_kwargs.items() if k == "out_shardings"}
  prefix = jit_kwargs.get("in_shardings")
  if prefix is not None:
    if isinstance(prefix, jax.sharding.Sharding):
      kwargs["in_shardings"] = prefix
    else:  # a tree prefix of the arguments, one sharding per leaf of each subtree
      flat = []
      jax.tree.map(lambda sh, sub: flat.extend([sh] * len(jax.tree.leaves(sub))),
                   tuple(prefix), args)
      kwargs["in_shardings"] = tuple(flat)
  return kwargs


def _without_addresses(text: str) -> str:
  """Object addresses in a repr (a function's) differ between processes."""
  return re.sub(r" at 0x[0-9a-f]+", "", text)


def _digest(*parts: str) -> str:
  h = hashlib.sha256()
  for p in parts:
    h.update(p.encode())
    h.update(b"\0")
  return h.hexdigest()


def _load(path: str):
  """The stored program at `path`, or None: none, one whose bytes or whose listed user
  modules differ from what was written (then removed, or left to be replaced)."""
  try:
    with open(path, "rb") as f:
      header, data = f.read().split(b"\n", 1)
    manifest = json.loads(header)
  except (OSError, ValueError):
    manifest = data = None
  if manifest is None:
    if os.path.exists(path):
      logging.warning("dnas: dropping the unreadable trace %s", path)
      _remove(path)
    return None
  if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
    logging.warning("dnas: dropping the corrupted trace %s", path)
    _remove(path)
    return None
  if any(_file_digest(p) != d for p, d in manifest.get("modules", {}).items()):
    return None  # a module the trace imported has changed: traced and stored again
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("dnas: dropping the unreadable trace %s (%s)", path, e)
    _remove(path)
    return None
  try:
    os.utime(path)  # recently used
  except OSError:
    pass
  return exported


def _store(path: str, data: bytes, modules: dict) -> None:
  """Writes `data` to `path` atomically (a reader sees all of it or nothing) after a
  header with its digest and the `modules` it was traced with, then removes the least
  recently used entries beyond `MAX_ENTRIES`. A cache that cannot be written costs the
  next process a trace, nothing else."""
  header = json.dumps(dict(sha256=hashlib.sha256(data).hexdigest(), modules=modules))
  where, tmp = os.path.dirname(path), None
  try:
    os.makedirs(where, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=where, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(header.encode() + b"\n" + data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("dnas: cannot keep the trace in %s (%s)", path, e)
    if tmp:
      _remove(tmp)
    return
  _evict(where)


def _evict(where: str) -> None:
  entries, now = [], time.time()
  for name in os.listdir(where):
    p = os.path.join(where, name)
    try:
      mtime = os.path.getmtime(p)
    except OSError:
      continue
    if name.endswith(".exported"):
      entries.append((mtime, p))
    elif name.endswith(".tmp") and now - mtime > 3600:  # a writer killed mid-write
      _remove(p)
  for _, p in sorted(entries)[:-MAX_ENTRIES]:
    _remove(p)


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def fingerprint(user_sources: dict | None = None) -> str:
  """What every trace may depend on besides its arguments: the backend and its devices,
  JAX's configuration, installed distributions, and the source of dnas and of the loaded
  modules outside the standard library and site-packages (`_user_sources`; those a trace
  imports are listed in its entry and checked when it is read; `user_sources`: those
  already collected). The same on
  every process of a multi-host run (one SPMD program)."""
  devices = jax.devices()
  backend = (jax.default_backend(), devices[0].client.platform_version,
             sorted({d.device_kind for d in devices}), len(devices), jax.process_count())
  config = _without_addresses(repr(sorted(
      (k, v) for k, v in jax.config.values.items() if k not in _DIAGNOSTIC_CONFIG)))
  package = os.path.dirname(os.path.realpath(__file__))
  dnas_files = sorted(os.path.join(d, f) for d, _, names in os.walk(package) for f in names
                      if f.endswith(".py"))
  return _digest(repr(backend), config, _distributions(),
                 *(f"{os.path.relpath(p, package)} {_file_digest(p)}" for p in dnas_files),
                 repr(sorted((_user_sources() if user_sources is None
                              else user_sources).items())))


# JAX options that change what is logged or which programs the compile cache keeps, never
# a traced program: `JAX_LOG_COMPILES=1` on a warm run must not trace again.
_DIAGNOSTIC_CONFIG = frozenset((
    "jax_log_compiles", "jax_explain_cache_misses", "jax_logging_level",
    "jax_debug_log_modules", "jax_compiler_detailed_logging_min_ops",
    "jax_log_checkpoint_residuals", "jax_compilation_cache_max_size",
    "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes",
    "jax_raise_persistent_cache_errors"))


@functools.cache
def _distributions() -> str:
  # A set: run from a source checkout, its own metadata (dnas.egg-info) is found twice.
  return repr(sorted({((d.metadata["Name"] or "").lower(), d.version)
                      for d in importlib.metadata.distributions()}))


def _library_dirs() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
  dirs.add(os.path.realpath(os.path.join(sys.base_prefix, "lib")))
  dirs.add(os.path.dirname(os.path.realpath(__file__)))  # dnas itself: `fingerprint`
  return tuple(d + os.sep for d in sorted(dirs))


def _user_sources() -> dict[str, str]:
  """{file: digest} of the loaded modules outside the library directories and dnas: the
  user's own (a registered space, a script)."""
  libraries, files = _library_dirs(), {}
  for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and path.endswith(".py"):
      path = os.path.realpath(path)
      if not path.startswith(libraries):
        files[path] = _file_digest(path)
  return files


_FILE_DIGESTS: dict = {}


def _file_digest(path: str) -> str:
  try:
    st = os.stat(path)
  except OSError:
    return "missing"
  stamp = (st.st_mtime_ns, st.st_size)
  cached = _FILE_DIGESTS.get(path)
  if cached is None or cached[0] != stamp:
    with open(path, "rb") as f:
      cached = _FILE_DIGESTS[path] = (stamp, hashlib.sha256(f.read()).hexdigest())
  return cached[1]
