"""Plumbing shared by the search and retraining loops: the work directory, preemption
(SIGTERM), non-finite losses, and metric files that always agree with the checkpoint."""

import json
import math
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
import tqdm

from dnas.configs import base
from dnas.errors import ConfigError, flatten
from dnas.execution import (CompileWatch, Flat,  # noqa: F401  (Flat re-exported)
                            precompile_in_background)
from dnas.summaries import Summaries


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved. Rerunning the same command resumes."""


class NonFiniteError(FloatingPointError):
  """A loss or gradient norm became inf or NaN."""


def check_workdir(workdir: str) -> None:
  """Refuses a URL (`gs://...`): the loops write their work directory with the local file
  API, so a URL would become a local directory named `gs:`."""
  if "://" in str(workdir):
    raise ConfigError(f"--workdir {workdir}: a URL is not supported; give a local or mounted "
                      f"path (a Google Drive or a bucket mounted with gcsfuse, NFS)")


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


def epoch_steps(examples: int, batch_size: int, *, devices: int, max_steps: int, key: str,
                split: str) -> int:
  """Steps per epoch of batches of `batch_size` (config field `key`) over `examples` of
  `split`, capped at `max_steps` (0: no cap); ConfigError when the batch does not divide
  among the mesh's `devices` or exceeds the split."""
  if batch_size % devices:
    raise ConfigError(f"{key} {batch_size} must be divisible by the {devices} devices of "
                      f"the mesh")
  steps = examples // batch_size
  if steps == 0:
    raise ConfigError(f"{key} {batch_size} is larger than {split} ({examples} examples)")
  return min(steps, max_steps) if max_steps else steps


def fresh_meta() -> dict:
  """The meta of a run before its first step (`EpochLoop`)."""
  return dict(epoch=0, batch=0, sums={}, records=[], elapsed=0.0)


def restore(ckpt, state, *, resume: bool, workdir: str, steps_per_epoch: int,
            fresh: dict | None = None):
  """(found, state, meta): the latest readable checkpoint of `ckpt` (`found`, None when
  there is none or `resume` is off) restored into the structure of `state`, or `state`
  itself with `fresh` (default `fresh_meta()`) as its meta."""
  found = ckpt.restore_latest(state) if resume else None
  if found is None:
    return None, state, fresh or fresh_meta()
  step, state, meta = found
  print(f"dnas: resuming {workdir} at epoch {meta['epoch']}, step {step} (batch "
        f"{meta['batch']} of {steps_per_epoch})", file=sys.stderr)
  return found, state, meta


class Pipeline:
  """`batches(epoch, start)` for `EpochLoop.run`: the iterator that `make(epoch, start)`
  builds on the first call, for the rest of the run (Grain's worker pools then live
  across epochs; the loop takes steps_per_epoch batches per epoch)."""

  def __init__(self, make):
    self._make, self._it = make, None

  def __call__(self, epoch: int, start: int):
    if self._it is None:
      self._it = self._make(epoch, start)
    return self._it


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
    self._compiled: dict[str, bool] = {}
    # Set once the first step's trace is done (it compiles, or has run): `run`'s programs
    # compiled ahead start then.
    self._stepping = threading.Event()
    self._start = time.time() - meta["elapsed"]

  @property
  def done(self) -> int:
    """Steps taken: what checkpoints are numbered by."""
    return self.meta["epoch"] * self.steps_per_epoch + self.meta["batch"]

  def elapsed(self) -> float:
    return time.time() - self._start

  def save(self, state) -> None:
    self.ckpt.save(self.done, self.to_tree(state), dict(self.meta, elapsed=self.elapsed()))

  def _watched(self, bar, what: str, fn, *args):
    """fn(*args), reporting what it compiles (`execution.CompileWatch`): while a first
    call compiles, the progress bar says so with the seconds so far (the step's count
    would not move for minutes); afterwards one line says what was compiled or loaded
    from the persistent compile cache, and how long it took."""
    ticker = None
    if not self._compiled.get(what) and not bar.disable:
      ticker = _Ticker(bar, f"compiling {what} (first time only)")
    with CompileWatch(compiling=self._stepping) as watch:
      try:
        out = fn(*args)
      finally:
        if ticker is not None:
          ticker.stop()
        self._stepping.set()
    self._compiled[what] = True
    self._report(what, watch)
    return out

  def _report(self, what: str, watch: CompileWatch, where: str = "") -> None:
    line = watch.summary(what)
    if line and self.primary:
      tqdm.tqdm.write(f"dnas: {line}{where}", file=sys.stderr)

  def _preempted(self) -> Preempted:
    return Preempted(f"SIGTERM: saved checkpoint {self.done} in {self.ckpt.directory}; rerun "
                     f"the same command to resume")

  def run(self, state, batches, step, end_epoch, written=None, ahead=None):
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
      ahead: {what: [(program, args), ...]}: programs that `end_epoch` calls
        (`cpu.compile_then_trim` programs or `jax.jit` functions, with
        `jax.ShapeDtypeStruct` arguments), compiled in a background thread once the first
        step's trace is done, while the step compiles (XLA:CPU compiles one program on
        about 1.4 of 2 cores); a line reports each when it is done. The first epoch's
        end waits for them, and so does a run that stops before it (XLA must not be
        compiling while the interpreter exits), once the program being compiled is done:
        nothing more is compiled then. They are compiled in JAX's default
        configuration, not a caller's thread-local one (`jax.enable_x64()` around `run`).
    """
    meta = self.meta
    ending = threading.Event()

    def after_first_trace():
      self._stepping.wait()
      return not ending.is_set()
    threads = [precompile_in_background(calls, name="dnas-compile-ahead",
                                        report=lambda w, what=what: self._report(
                                            what, w, " in the background"),
                                        after=after_first_trace)
               for what, calls in (ahead or {}).items() if calls]
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

    compiled_eval = False

    def first_end(*args):
      for thread in threads:
        thread.join()
      return end_epoch(*args)
    try:
      for epoch in range(meta["epoch"], self.epochs if not meta.get("stopped") else 0):
        inputs = batches(epoch, meta["batch"])
        for i in range(meta["batch"], self.steps_per_epoch):
          state, metrics = self._watched(bar, f"the {self.name} step", step, state,
                                         next(inputs), epoch, i)
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
        if compiled_eval:
          record = end_epoch(state, epoch, means)
        else:  # the first epoch's end compiles the evaluation, or waits for it (`ahead`)
          record = self._watched(bar, "the evaluation", first_end, state, epoch, means)
          compiled_eval = True
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
      ending.set()
      self._stepping.set()
      try:
        bar.close()
        self.ckpt.close()
        self.summaries.close()
      finally:
        for thread in threads:
          thread.join()
    return state


class _Ticker:
  """Updates a progress bar's description with `text` and the seconds since it started,
  once a second from a daemon thread, until `stop()`."""

  def __init__(self, bar, text: str):
    self._bar, self._text, self._done = bar, text, threading.Event()
    self._started = time.perf_counter()
    self._show()
    self._thread = threading.Thread(target=self._run, name="dnas-compile-ticker", daemon=True)
    self._thread.start()

  def _show(self):
    self._bar.set_description_str(f"{self._text}: {time.perf_counter() - self._started:.0f} s")
    self._bar.refresh()

  def _run(self):
    while not self._done.wait(1.0):
      self._show()

  def stop(self):
    self._done.set()
    self._thread.join()
    self._bar.set_description_str("")


def _host(x):
  """A replicated (or single-process) device scalar as numpy, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
