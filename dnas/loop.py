"""Plumbing shared by the search and retraining loops: the work directory, preemption
(SIGTERM), non-finite losses, and metric files that always agree with the checkpoint."""

import json
import math
import os
import signal
import threading

import jax

from dnas.config import ConfigError, flatten


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
      diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
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
