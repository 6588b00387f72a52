"""Traces kept on disk (`dnas.trace_cache`): a later process calls the stored program
instead of tracing, with the same results; anything a trace depends on changes the key."""

import collections
import importlib
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import trace_cache


@pytest.fixture
def where(tmp_path, monkeypatch):
  d = tmp_path / trace_cache.SUBDIR
  monkeypatch.setattr(trace_cache, "directory", lambda: str(d))
  return d


def _step(traced):
  """A step shaped as the search's: (buffers, batch) -> (buffers, metrics); `traced`
  counts the traces of its body."""
  def step(buffers, batch):
    traced.append(1)
    new = [b * batch["x"].mean() + jnp.tanh(b) for b in buffers]
    return new, {"loss": sum(jnp.sum(b ** 2) for b in new), "n": batch["x"].shape[0]}
  return step


def _args(seed=0, n=4):
  rng = np.random.default_rng(seed)
  return ([jnp.asarray(rng.normal(size=(3,)), jnp.float32),
           jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)],
          {"x": jnp.asarray(rng.normal(size=(n,)), jnp.float32)})


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_later_process_calls_the_stored_program(where):
  traced = []
  expected = jax.jit(_step([]))(*_args())
  first = trace_cache.cached_jit(_step(traced), "key", donate_argnums=0)
  args = _args()
  out = first(*args)
  assert traced == [1] and len(os.listdir(where)) == 1
  assert args[0][0].is_deleted()  # the buffers are donated
  assert _equal(out, expected)
  # A new jit (as in a new process) loads the program: the body is not traced again.
  later = trace_cache.cached_jit(_step(traced), "key", donate_argnums=0)
  args = _args()
  out = later(*args)
  assert traced == [1] and len(os.listdir(where)) == 1
  assert args[0][0].is_deleted()
  assert _equal(out, expected)
  # Ahead of time as `cpu.compile_then_trim` compiles, from shapes alone.
  specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _args())
  compiled = trace_cache.cached_jit(_step(traced), "key", donate_argnums=0).lower(
      *specs).compile()
  assert traced == [1]
  assert _equal(compiled(*_args()), expected)


def test_the_key_the_shapes_and_the_jit_options_each_keep_their_own_program(where):
  traced = []
  trace_cache.cached_jit(_step(traced), "key")(*_args())
  trace_cache.cached_jit(_step(traced), "another key")(*_args())
  out = trace_cache.cached_jit(_step(traced), "key")(*_args(n=6))
  assert _equal(out, jax.jit(_step([]))(*_args(n=6)))
  trace_cache.cached_jit(_step(traced), "key", donate_argnums=0)(*_args())
  assert len(traced) == 4 and len(os.listdir(where)) == 4
  trace_cache.cached_jit(_step(traced), None)(*_args())  # no key: a plain jax.jit
  assert len(traced) == 5 and len(os.listdir(where)) == 4


def test_arguments_of_any_tree_and_their_shardings(where):
  # A Flax state (node types jax.export cannot serialize) with a sharding per subtree,
  # as the evaluation's (params, batch statistics) arrive.
  from flax import nnx  # pylint: disable=import-outside-toplevel
  traced = []
  net = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  params = nnx.state(net, nnx.Param)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def fn(params, x):
    traced.append(1)
    return (x @ params["kernel"][...] + params["bias"][...]).sum(), x.shape[0]
  x = jnp.arange(6.0).reshape(2, 3)
  expected = jax.jit(fn)(params, x)
  for _ in range(2):
    out = trace_cache.cached_jit(fn, "key", in_shardings=(one, one))(params, x)
    assert _equal(out, expected)
  assert traced == [1, 1]  # expected's and the export's; the second jit loaded it


@pytest.mark.parametrize("damage", ["truncated", "flipped", "header"])
def test_a_damaged_entry_is_dropped_and_traced_again(where, caplog, damage):
  traced = []
  trace_cache.cached_jit(_step(traced), "key")(*_args())
  (entry,) = where.iterdir()
  # The header (digests; as long as the modules loaded) and the serialized program.
  header, payload = entry.read_bytes().split(b"\n", 1)
  payload = bytearray(payload)
  if damage == "truncated":
    payload = payload[:len(payload) // 2]
  elif damage == "flipped":  # bytes that deserialize, but not into the program written
    payload[-len(payload) // 3] ^= 0xFF
  else:
    header = header[:len(header) // 2]
  entry.write_bytes(header + b"\n" + bytes(payload))
  with caplog.at_level(logging.WARNING):
    out = trace_cache.cached_jit(_step(traced), "key")(*_args())
  assert ("unreadable trace" if damage == "header" else "corrupted trace") in caplog.text
  assert len(traced) == 2 and _equal(out, jax.jit(_step([]))(*_args()))
  trace_cache.cached_jit(_step(traced), "key")(*_args())  # rewritten, readable
  assert len(traced) == 2


def test_a_module_the_trace_imports_is_checked_when_read(where, tmp_path, monkeypatch):
  # A user's module imported only while tracing is not in the key (made before the
  # trace): the entry lists it, and an edit to it makes the next process trace again.
  (tmp_path / "lazy_user_op.py").write_text("SCALE = 2.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  traced = []

  def fn(x):
    traced.append(1)
    return x * importlib.import_module("lazy_user_op").SCALE
  try:
    assert np.array_equal(trace_cache.cached_jit(fn, "key")(jnp.ones(2)), [2.0, 2.0])
    del sys.modules["lazy_user_op"]  # a new process: not imported before the trace
    assert np.array_equal(trace_cache.cached_jit(fn, "key")(jnp.ones(2)), [2.0, 2.0])
    assert len(traced) == 1
    sys.modules.pop("lazy_user_op", None)  # not imported: the program was called
    (tmp_path / "lazy_user_op.py").write_text("SCALE = 3.0\n")
    os.utime(tmp_path / "lazy_user_op.py", (1, 1))
    assert np.array_equal(trace_cache.cached_jit(fn, "key")(jnp.ones(2)), [3.0, 3.0])
    assert len(traced) == 2
  finally:
    sys.modules.pop("lazy_user_op", None)


def test_no_traces_are_kept_for_an_interactive_session(monkeypatch):
  # A notebook cell's code has no file to key on.
  script = type(sys)("__main__")
  script.__file__ = "search.py"
  monkeypatch.setitem(sys.modules, "__main__", script)
  assert not trace_cache.interactive()
  monkeypatch.setitem(sys.modules, "__main__", type(sys)("__main__"))
  assert trace_cache.interactive() and trace_cache.directory() is None


def test_options_it_cannot_key_are_refused():
  with pytest.raises(ValueError, match="got static_argnums"):
    trace_cache.cached_jit(lambda x, n: x, "key", static_argnums=1)


def test_a_program_export_refuses_is_traced_with_a_warning(where, caplog):
  Pair = collections.namedtuple("Pair", "a b")  # jax.export serializes no namedtuple
  traced = []

  def fn(x):
    traced.append(1)
    return Pair(x + 1, x * 2)
  with caplog.at_level(logging.WARNING):
    out = trace_cache.cached_jit(fn, "key")(jnp.arange(3.0))
  assert "traced in every process" in caplog.text
  assert isinstance(out, Pair) and np.array_equal(out.b, [0.0, 2.0, 4.0])
  assert not where.exists() or not os.listdir(where)

  def broken(x):
    return x @ jnp.ones((5,))  # fn's own error surfaces as without the cache
  with pytest.raises(TypeError, match="dot_general"):
    trace_cache.cached_jit(broken, "key")(jnp.arange(3.0))


def test_the_least_recently_used_entries_go(where, monkeypatch):
  monkeypatch.setattr(trace_cache, "MAX_ENTRIES", 2)
  for key in ("a", "b"):
    trace_cache.cached_jit(_step([]), key)(*_args())
  a = next(where.iterdir())
  os.utime(a, (0, 0))  # used long ago: the next entry replaces it
  trace_cache.cached_jit(_step([]), "c")(*_args())
  names = os.listdir(where)
  assert len(names) == 2 and a.name not in names


def test_the_fingerprint_follows_loaded_user_code(tmp_path, monkeypatch):
  # A module of the user's (outside the standard library and site-packages), such as
  # a registered space: editing it changes what a trace may compute.
  (tmp_path / "user_space_probe.py").write_text("WIDTH = 3\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  before = trace_cache.fingerprint()
  module = importlib.import_module("user_space_probe")
  try:
    loaded = trace_cache.fingerprint()
    assert loaded != before
    assert trace_cache.fingerprint() == loaded  # stable while nothing changes
    (tmp_path / "user_space_probe.py").write_text("WIDTH = 4\n")
    os.utime(tmp_path / "user_space_probe.py", (1, 1))  # another mtime, whatever the clock
    assert trace_cache.fingerprint() not in (before, loaded)
  finally:
    del sys.modules[module.__name__]


def test_logging_options_keep_the_fingerprint_and_program_options_change_it():
  before = trace_cache.fingerprint()
  with jax.log_compiles(True), jax.explain_cache_misses(True):
    assert trace_cache.fingerprint() == before  # a diagnostic run loads the same traces
  with jax.default_matmul_precision("highest"):
    assert trace_cache.fingerprint() != before
