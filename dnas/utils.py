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
