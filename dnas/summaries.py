"""TensorBoard summaries without TensorFlow (tensorboardX writes the event files).

`tensorboard --logdir=<workdir>/tensorboard` shows what `metrics.jsonl` holds (runs
`search` and `train`): losses,
accuracies, alpha entropy and predicted latency per epoch, and every edge's op weights
softmax(alpha) as `op_weights/<cell>/e<edge>/<op>`.
"""

import numbers
import os
import time

import numpy as np


class Summaries:
  """Scalars for TensorBoard in `logdir`. With `purge_step`, TensorBoard drops the events
  of this directory at steps >= purge_step that an interrupted run wrote (a resumed run
  passes its checkpoint's step + 1, as `metrics.jsonl` is cut back to the checkpoint)."""

  def __init__(self, logdir: str, *, purge_step: int | None = None, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(logdir, exist_ok=True)
      # tensorboardX names files by the second; a unique suffix keeps a run resumed within
      # the same second from overwriting the previous file (names sort by time, as
      # TensorBoard reads them).
      self._writer = SummaryWriter(logdir, purge_step=purge_step or None, flush_secs=30,
                                   filename_suffix=f".{time.time_ns()}")

  def scalars(self, step: int, record: dict, prefix: str) -> None:
    """Every real-number field of `record` as `<prefix>/<name>` (others are skipped)."""
    if self._writer is None:
      return
    for name, value in record.items():
      if isinstance(value, numbers.Real) and not isinstance(value, bool):
        self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

  def op_weights(self, step: int, kind: str, weights, primitives) -> None:
    """weights: f32[E, K] softmax(alpha) of one cell type; one scalar per edge and op."""
    if self._writer is None:
      return
    for e, row in enumerate(np.asarray(weights)):
      for name, w in zip(primitives, row):
        self._writer.add_scalar(f"op_weights/{kind}/e{e:02d}/{name}", float(w), step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
