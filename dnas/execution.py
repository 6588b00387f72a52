"""How a search step runs, apart from what it computes (`dnas.bilevel`): one jitted
program or a few (`Execution`, `split_piece`), their shardings over the device mesh
(`jit_shardings`), and the state carried between steps as a short list of buffers
(`Flat`)."""

import logging
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnas import cpu, kernels, parallel, trace_cache

# How a jitted search step is compiled (`Execution.programs`): "one" program, or "split"
# into a few programs that share one gradient program; "auto": split the second-order
# methods on CPU only (XLA:CPU compiles one second-order program for 10+ minutes and
# holds its three gradient passes at once), one program elsewhere.
PROGRAMS = ("auto", "one", "split")


class Execution(NamedTuple):
  """How the steps run, apart from what they compute: `jit`; `programs` (PROGRAMS);
  `shardings`, a pair (state shardings, batch sharding) from `dnas.parallel` (SPMD over
  their mesh; inputs must be placed accordingly); `dtype`, the activations' dtype (None:
  the weights' own; `make_loss_fn`)."""
  jit: bool = True
  programs: str = "auto"
  shardings: tuple | None = None
  dtype: object = None

  def split(self, order: str) -> bool:
    if self.programs not in PROGRAMS:
      raise ValueError(f"programs {self.programs!r} is unknown; valid: {', '.join(PROGRAMS)}")
    if not self.jit or self.programs == "one":
      return False
    return self.programs == "split" or (order != "first" and jax.default_backend() == "cpu")



def split_piece(shardings=None, donate: bool = True):
  """`piece` for `make_phase_steps`: each piece its own program, compiled ahead of its
  first call per argument signature; state updates keep the state's shardings and
  donate it (unless `donate=False`, for benchmarks that rerun a step)."""
  def piece(fn, state_update=False):
    kwargs = {}
    if state_update:
      if donate:
        kwargs["donate_argnums"] = 0
      if shardings is not None:
        replicated = jax.sharding.NamedSharding(shardings[1].mesh, jax.sharding.PartitionSpec())
        kwargs["out_shardings"] = (shardings[0], replicated)
    return cpu.compile_then_trim(jax.jit(kernels.for_local_devices(fn), **kwargs))
  return piece


def jit_shardings(shardings, num_batches):
  """in/out shardings of f(state, *batches) -> (state, replicated metrics)."""
  if shardings is None:
    return {}
  state_sh, batch_sh = shardings
  replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
  return dict(in_shardings=(state_sh,) + (batch_sh,) * num_batches,
              out_shardings=(state_sh, replicated))


class CompileWatch:
  """Counts, while active (`with CompileWatch() as w:`), the programs JAX compiles or
  loads from its persistent compilation cache, from `jax.monitoring`'s events: `programs`
  (each backend compile request), `cached` (of those, loaded from the cache), and the
  seconds spent tracing (`trace_s`), lowering to StableHLO (`lower_s`) and compiling or
  loading (`compile_s`). Events count from the thread that entered it and from the
  threads `precompile_in_background` starts while it is active (a step's programs
  compiled ahead are the step's), not from other threads. `compiling` (an Event, if
  given) is set when one of them starts XLA's compile or its lookup in the persistent
  cache (without the cache: when it has lowered a program): its trace, which holds the
  GIL, is done."""

  _active: list["CompileWatch"] = []
  _listening = False

  def __init__(self, compiling: threading.Event | None = None):
    self.compiling = compiling
    self.owner = threading.get_ident()
    self.programs = self.cached = 0
    self.trace_s = self.lower_s = self.compile_s = 0.0
    self.started = self.seconds = 0.0
    self.threads = {self.owner}

  @classmethod
  def _watching(cls) -> list["CompileWatch"]:
    me = threading.get_ident()
    return [w for w in list(cls._active) if me in w.threads]

  @classmethod
  def _listen(cls):
    if cls._listening:
      return
    cls._listening = True

    def event(name, **kwargs):
      del kwargs
      if name == "/jax/compilation_cache/cache_hits":
        for w in cls._watching():
          w.cached += 1
      elif name == "/jax/compilation_cache/compile_requests_use_cache":
        for w in cls._watching():
          w.compile_requested()

    def duration(name, seconds, **kwargs):
      del kwargs
      for w in cls._watching():
        if name == "/jax/core/compile/backend_compile_duration":
          w.programs += 1
          w.compile_s += seconds
        elif name == "/jax/core/compile/jaxpr_trace_duration":
          w.trace_s += seconds
        elif name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
          w.lower_s += seconds
          # With the persistent cache, a trace kept on disk (`trace_cache`) lowers twice:
          # the compile request above comes after both.
          if not jax.config.jax_compilation_cache_dir:
            w.compile_requested()
    jax.monitoring.register_event_listener(event)
    jax.monitoring.register_event_duration_secs_listener(duration)

  def compile_requested(self):
    # Only the watch's own thread: a helper thread's small program (a step's updates
    # compiled ahead) may reach its compile while the main trace goes on.
    if self.compiling is not None and threading.get_ident() == self.owner:
      self.compiling.set()

  def __enter__(self):
    self._listen()
    self.started = time.perf_counter()
    self._active.append(self)
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.started
    self._active.remove(self)
    return False

  def summary(self, what: str) -> str | None:
    """One line on what happened to `what` ("the search step"), or None when nothing
    was compiled or loaded."""
    if not self.programs:
      return None
    def n(k):
      return f"{k} program{'s' if k != 1 else ''}"
    compiled = self.programs - self.cached
    times = f"trace {self.trace_s:.1f} s, lower {self.lower_s:.1f} s"
    if not compiled:
      return (f"loaded {what} from the compile cache in {self.seconds:.1f} s "
              f"({n(self.programs)}; {times}, load {self.compile_s:.1f} s)")
    from_cache = f", {self.cached} loaded from the compile cache" if self.cached else ""
    return (f"compiled {what} in {self.seconds:.1f} s ({n(compiled)}{from_cache}; {times}, "
            f"compile {self.compile_s:.1f} s)")


def specs(tree):
  """Arrays -> `jax.ShapeDtypeStruct`s of their shapes, dtypes and shardings, to compile
  for them ahead (`precompile_in_background`)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def precompile_in_background(calls, name: str = "dnas-compile-ahead", report=None,
                             after=None) -> threading.Thread:
  """Compiles each `(program, args)` of `calls` (`cpu.compile_then_trim` programs or
  `jax.jit` functions, and their `jax.ShapeDtypeStruct` arguments: a jitted function's
  later call with such arguments finds the program compiled) in a daemon thread, while
  the caller compiles another program: XLA:CPU compiles one program on about 1.4 of 2
  cores here. A failure is logged and the program compiles on its first call instead.

  The thread's compiles count in the `CompileWatch`es active in the calling thread, and
  in its own watch, which `report(watch)` receives when it is done (after a failure
  too). `after()`, if given, is called before each program: it may block until the
  caller's own trace is done (tracing holds the GIL: two traces at once take as long as
  one after the other), and returns False to compile nothing more."""
  watches = CompileWatch._watching()  # pylint: disable=protected-access

  def work():
    for w in watches:
      w.threads.add(threading.get_ident())
    go = after or (lambda: True)
    if not go():
      return
    with CompileWatch() as watch:  # from the end of the wait: its seconds are compiling
      try:
        for n, (program, args) in enumerate(calls):
          if n and not go():
            break
          if hasattr(program, "precompile"):
            program.precompile(*args)
          else:
            program.lower(*args).compile()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("compiling ahead failed: %s", e)
    if report is not None:
      report(watch)
  thread = threading.Thread(target=work, name=name, daemon=True)
  thread.start()
  return thread


class Flat:
  """A state pytree carried between steps as a short list of buffers.

  Each jit call pays host time per argument and result buffer: the DARTS search state at
  CIFAR shapes has 4,666 leaves, which cost tens of milliseconds to flatten as `nnx.State`s
  and as many again to pass as a plain list. The leaves have only 26 distinct shapes, so
  with `stack` the leaves of equal shape, dtype and sharding travel as one stacked buffer
  (unstacked and restacked inside the step's program). The loop holds the buffers and
  builds the tree only where it needs one (checkpoints, epoch ends).

  `stack=None` stacks off the CPU only: a CPU step takes seconds, so its host time does
  not count, while XLA:CPU compiles the unstacking slices and restacking concatenations
  as extra kernels (compile time up by half in a microbenchmark: BUILD_NOTES.md, "Host
  time per step call").
  `shardings` (a tree like the state, optional): where the leaves live; a stack of
  leaves sharded as P(a, b) is sharded as P(None, a, b).
  """

  def __init__(self, tree, shardings=None, stack: bool | None = None):
    leaves, self.treedef = jax.tree.flatten(tree)
    if stack is None:
      stack = jax.default_backend() != "cpu"
    self.shardings = (None if shardings is None else self.treedef.flatten_up_to(shardings))
    groups: dict = {}
    for i, x in enumerate(leaves):
      key = ((tuple(x.shape), x.dtype, getattr(x, "weak_type", False),
              None if shardings is None else self.shardings[i]) if stack else i)
      groups.setdefault(key, []).append(i)
    self.groups = list(groups.values())
    self.stacked = len(self.groups) < len(leaves)
    self._pack = self._unpack = None

  def __len__(self) -> int:
    """Buffers carried."""
    return len(self.groups)

  def _stack(self, leaves: list) -> list:
    return [leaves[g[0]] if len(g) == 1 else jnp.stack([leaves[i] for i in g])
            for g in self.groups]

  def _unstack(self, buffers: list) -> list:
    leaves = [None] * sum(map(len, self.groups))
    for g, b in zip(self.groups, buffers):
      if len(g) == 1:
        leaves[g[0]] = b
      else:
        for j, i in enumerate(g):
          leaves[i] = b[j]
    return leaves

  def buffer_shardings(self, shardings) -> list | None:
    """Shardings of the carried buffers, from a tree of shardings like the state's."""
    if shardings is None:
      return None
    flat = self.treedef.flatten_up_to(shardings)
    return [flat[g[0]] if len(g) == 1 else parallel.stacked_sharding(flat[g[0]])
            for g in self.groups]

  def leaves(self, tree) -> list:
    """The tree as the carried buffers (one program call when stacking)."""
    leaves = self.treedef.flatten_up_to(tree)
    if not self.stacked:
      return leaves
    if self._pack is None:
      out = None if self.shardings is None else self.buffer_shardings(
          self.treedef.unflatten(self.shardings))
      self._pack = jax.jit(self._stack, out_shardings=out)
    return self._pack(leaves)

  def tree(self, buffers):
    """The carried buffers as the tree (new arrays when stacking; `buffers` stay valid)."""
    if not self.stacked:
      return self.treedef.unflatten(buffers)
    if self._unpack is None:
      self._unpack = jax.jit(self._unstack, out_shardings=self.shardings)
    return self.treedef.unflatten(self._unpack(buffers))

  def jit(self, fn, *, in_shardings=None, out_shardings=None, cache_key: str | None = None):
    """fn(state, *args) -> (state, out), pure, as a jitted f(buffers, *args) -> (buffers,
    out) that donates the buffers. Shardings as `jax.jit`'s, with the state's (the first
    argument's and output's) given as a tree like the state. `cache_key`: what `fn`
    computes beyond its code and arguments, to keep its trace on disk
    (`trace_cache.cached_jit`); None: traced in every process."""
    def flat_fn(buffers, *args):
      state, out = fn(self.treedef.unflatten(self._unstack(buffers)), *args)
      return self._stack(self.treedef.flatten_up_to(state)), out
    kwargs = {}
    if in_shardings is not None:
      kwargs = dict(in_shardings=(self.buffer_shardings(in_shardings[0]),)
                    + tuple(in_shardings[1:]),
                    out_shardings=(self.buffer_shardings(out_shardings[0]), out_shardings[1]))
    if cache_key is not None:
      cache_key = f"{cache_key} {self.treedef} {self.groups}"
    return trace_cache.cached_jit(flat_fn, cache_key, donate_argnums=0, **kwargs)

  def wrap(self, step):
    """A step that is not one program (`bilevel`'s split steps take trees): the same
    interface over the buffers, converting at each call."""
    def flat_step(buffers, *args):
      state, out = step(self.tree(buffers), *args)
      return self.leaves(state), out
    return flat_step
