"""Small helpers shared across dnas."""

import math

from flax import nnx


def count_params(module: nnx.Module, exclude: str | None = "auxiliary_head") -> int:
  """Number of `nnx.Param` scalars (ArchParam and BatchStat are not counted), as the
  reference's `count_parameters_in_MB` * 1e6: leaves whose path contains `exclude` are
  skipped. Works on abstract modules from `nnx.eval_shape`."""
  total = 0
  for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    if exclude is not None and exclude in map(str, path):
      continue
    total += math.prod(v.get_value().shape)
  return total


def evaluate(eval_fn, batches) -> tuple[float, float]:
  """Mean loss and accuracy over batches.

  Args:
    eval_fn: batch -> (sum of per-example losses, number correct).
    batches: iterable of {"image", "label": int32[B]} dicts.

  Returns:
    (mean loss, accuracy) over all examples.
  """
  loss, correct, n = 0.0, 0, 0
  for batch in batches:
    l, c = eval_fn(batch)
    loss, correct, n = loss + float(l), correct + int(c), n + len(batch["label"])
  return loss / n, correct / n
