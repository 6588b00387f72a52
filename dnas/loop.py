"""Plumbing shared by the search and retraining loops: the work directory, preemption
(SIGTERM), non-finite losses, and metric files that always agree with the checkpoint."""

import json
import math
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from dnas.config import ConfigError, flatten


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
    return [flat[g[0]] if len(g) == 1 else _stacked_sharding(flat[g[0]]) for g in self.groups]

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

  def jit(self, fn, *, in_shardings=None, out_shardings=None):
    """fn(state, *args) -> (state, out), pure, as a jitted f(buffers, *args) -> (buffers,
    out) that donates the buffers. Shardings as `jax.jit`'s, with the state's (the first
    argument's and output's) given as a tree like the state."""
    def flat_fn(buffers, *args):
      state, out = fn(self.treedef.unflatten(self._unstack(buffers)), *args)
      return self._stack(self.treedef.flatten_up_to(state)), out
    kwargs = {}
    if in_shardings is not None:
      kwargs = dict(in_shardings=(self.buffer_shardings(in_shardings[0]),)
                    + tuple(in_shardings[1:]),
                    out_shardings=(self.buffer_shardings(out_shardings[0]), out_shardings[1]))
    return jax.jit(flat_fn, donate_argnums=0, **kwargs)

  def wrap(self, step):
    """A step that is not one program (`bilevel`'s split steps take trees): the same
    interface over the buffers, converting at each call."""
    def flat_step(buffers, *args):
      state, out = step(self.tree(buffers), *args)
      return self.leaves(state), out
    return flat_step


def _stacked_sharding(sharding):
  """The sharding of a stack of leaves that each have `sharding` (a new leading axis)."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        None, *sharding.spec))
  if sharding.is_fully_replicated:
    return sharding
  raise ValueError(f"cannot stack leaves with sharding {sharding}; pass stack=False")


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved. Rerunning the same command resumes."""


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became inf or NaN."""


def prepare_workdir(workdir: str, config, *, resume: bool, has_checkpoint: bool,
                    what: str) -> None:
  """Creates `workdir` and writes `config.json`, or checks that an existing run in it
  may be continued: `resume` must be on and its config must be this one."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"{what}_config.json")
  if has_checkpoint:
    if not resume:
      raise ConfigError(f"--workdir {workdir} already holds a {what} run with checkpoints; "
                        f"rerun with --resume to continue it, or choose another --workdir")
    if os.path.exists(path):
      with open(path) as f:
        old = flatten(json.load(f))
      new = flatten(json.loads(config.to_json()))
      # A key the run's saved config lacks was added to dnas after the run: it counts as
      # unchanged while it holds the base config's default (the behaviour the run had).
      from dnas.configs import base  # pylint: disable=g-import-not-at-top
      default = flatten(json.loads(base.get_config().to_json()))
      diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                    and not (k not in old and k in default and new.get(k) == default[k]))
      if diff:
        k = diff[0]
        raise ConfigError(f"--workdir {workdir} holds a {what} run with another config "
                          f"({k}: {old.get(k)!r} there, {new.get(k)!r} now"
                          f"{f', and {len(diff) - 1} more' if len(diff) > 1 else ''}); "
                          f"choose another --workdir")
  if jax.process_index() == 0:
    write_atomic(path, config.to_json(indent=1))


def write_atomic(path: str, text: str) -> None:
  """Writes a whole file or nothing (rename is atomic on POSIX)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_jsonl(path: str, records: list[dict]) -> None:
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def check_finite(metrics: dict, *, step: int, phases: dict[str, str]) -> None:
  """Raises NonFiniteError naming the step and phase of the first non-finite metric.

  Args:
    metrics: name -> float.
    step: the step that produced them (1-based, as checkpoints count).
    phases: metric name prefix -> phase name, e.g. {"a_": "architecture", "w_": "weight"}.
  """
  for name, v in metrics.items():
    if not math.isfinite(float(v)):
      phase = next((p for prefix, p in phases.items() if name.startswith(prefix)), "training")
      raise NonFiniteError(f"non-finite {name} ({v}) in the {phase} step of step {step}; "
                           f"stopped without saving it: the last checkpoint is the last good "
                           f"state (try a lower learning rate)")


class Preemption:
  """Context manager: SIGTERM sets `requested` instead of killing the process, so the loop
  can save a checkpoint at the next step boundary and raise `Preempted`."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    return False


class EpochLoop:
  """The epoch loop shared by search and retraining: steps, checkpoints with bitwise
  resume, SIGTERM, non-finite stop, metrics.jsonl, TensorBoard and the progress bar.
  What differs (the step, the epoch's end) comes in as functions.

  Each step's metrics are fetched one step late, after the next step is dispatched, so
  the host never waits for the device in between; they are checked (finite) before any
  checkpoint is written, so the last checkpoint is always a good state.

  `meta` (saved with every checkpoint) holds epoch, batch (within the epoch), sums (of
  this epoch's step metrics), records (one per finished epoch) and elapsed seconds;
  callers may keep more in it. The state the loop carries may be a `Flat` list of
  leaves: `to_tree` turns it into the checkpointed tree.
  """

  def __init__(self, *, name: str, workdir: str, ckpt, meta: dict, epochs: int,
               steps_per_epoch: int, every_steps: int, preemption: "Preemption",
               metrics_file: str, progress: bool = True, resumed: bool = False,
               phases: dict[str, str] | None = None, postfix_keys: tuple[str, ...] = (),
               to_tree=None):
    from dnas.summaries import Summaries  # pylint: disable=g-import-not-at-top
    self.name, self.ckpt, self.meta = name, ckpt, meta
    self.to_tree = to_tree or (lambda state: state)
    self.epochs, self.steps_per_epoch, self.every = epochs, steps_per_epoch, every_steps
    self.preemption, self.phases, self.postfix_keys = preemption, phases or {}, postfix_keys
    self.primary = jax.process_index() == 0  # one process writes the plain files
    self.metrics_path = os.path.join(workdir, metrics_file)
    if self.primary:
      write_jsonl(self.metrics_path, meta["records"])  # drops lines past the checkpoint
    # A resumed run drops what the interrupted one logged after its checkpoint.
    self.summaries = Summaries(os.path.join(workdir, "tensorboard", name), enabled=self.primary,
                               purge_step=self.done + 1 if resumed else None)
    self.progress = progress
    self.postfix: dict = {}
    self._start = time.time() - meta["elapsed"]

  @property
  def done(self) -> int:
    """Steps taken: what checkpoints are numbered by."""
    return self.meta["epoch"] * self.steps_per_epoch + self.meta["batch"]

  def elapsed(self) -> float:
    return time.time() - self._start

  def save(self, state) -> None:
    self.ckpt.save(self.done, self.to_tree(state), dict(self.meta, elapsed=self.elapsed()))

  def _preempted(self) -> Preempted:
    return Preempted(f"SIGTERM: saved checkpoint {self.done} in {self.ckpt.directory}; rerun "
                     f"the same command to resume")

  def run(self, state, batches, step, end_epoch, written=None):
    """Runs the remaining epochs; returns the final state.

    Args:
      state: the state a step reads and writes (restored or fresh).
      batches(epoch, start): an iterator over the epoch's step inputs from batch `start`.
      step(state, inputs, epoch, i) -> (state, metrics): one step, dispatched
        asynchronously; metrics a flat dict of device scalars.
      end_epoch(state, epoch, means) -> record: the epoch's record (its mean step
        metrics in `means`), before the checkpoint; it may write TensorBoard events.
        A record with "stop": true ends the run after this epoch (DARTS-ES); a resumed
        run that had stopped does no more epochs.
      written(record): called on the primary process after the epoch's checkpoint and
        metric line are written (e.g. to write the derived architecture).
    """
    import tqdm  # pylint: disable=g-import-not-at-top
    meta = self.meta
    bar = tqdm.tqdm(total=self.epochs * self.steps_per_epoch, initial=self.done,
                    disable=not self.progress, unit="step", dynamic_ncols=True)
    pending = None  # (step number, device metrics) of the last dispatched step

    def settle():
      # The previous step's metrics: host values, checked, summed into the epoch.
      nonlocal pending
      if pending is None:
        return
      number, metrics = pending
      pending = None
      metrics = {k: float(v) for k, v in jax.tree.map(_host, metrics).items()}
      check_finite(metrics, step=number, phases=self.phases)
      for k, v in metrics.items():
        meta["sums"][k] = meta["sums"].get(k, 0.0) + v
      bar.set_postfix(epoch=meta["epoch"], **{k: f"{metrics[k]:.3f}" for k in
                                              self.postfix_keys if k in metrics},
                      **self.postfix)

    first = True
    try:
      for epoch in range(meta["epoch"], self.epochs if not meta.get("stopped") else 0):
        inputs = batches(epoch, meta["batch"])
        for i in range(meta["batch"], self.steps_per_epoch):
          if first:
            bar.set_description_str("compiling (the next run with this config reuses the "
                                    "compile cache)")
            bar.refresh()
          state, metrics = step(state, next(inputs), epoch, i)
          if first:
            bar.set_description_str("")
            first = False
          settle()
          pending = (self.done + 1, metrics)
          meta["batch"] += 1
          bar.update(1)
          if meta["batch"] == self.steps_per_epoch:
            break  # the epoch end saves (and answers a SIGTERM)
          if self.preemption.requested or (self.every and self.done % self.every == 0):
            settle()
            self.save(state)
            if self.preemption.requested:
              raise self._preempted()
        settle()
        means = {k: v / self.steps_per_epoch for k, v in meta["sums"].items()}
        record = end_epoch(state, epoch, means)
        record.setdefault("wall_time", self.elapsed())
        meta["records"].append(record)
        meta.update(epoch=epoch + 1, batch=0, sums={})
        if record.get("stop"):
          meta["stopped"] = True
        self.summaries.scalars(self.done, record, self.name)
        self.summaries.flush()  # on disk before the checkpoint that a resumed run purges after
        self.save(state)
        if self.primary:
          write_jsonl(self.metrics_path, meta["records"])
          if written is not None:
            written(record)
        if meta.get("stopped"):
          break
        if self.preemption.requested and epoch + 1 < self.epochs:
          raise self._preempted()
    finally:
      bar.close()
      self.ckpt.close()
      self.summaries.close()
    return state


def _host(x):
  """A replicated (or single-process) device scalar as numpy, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
