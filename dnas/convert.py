"""PyTorch checkpoints of the reference code into dnas networks.

  state_dict = {k: v.numpy() for k, v in torch.load("weights.pt").items()}
  net = nb201.TinyNetwork(arch, 16, 5, 10, rngs=nnx.Rngs(0))
  convert.load_torch_state_dict(net, state_dict, nb201.torch_name)

  net = darts.NetworkCIFAR(darts.DARTS_V2, 36, 10, 20, auxiliary=True, rngs=nnx.Rngs(0))
  convert.load_torch_state_dict(net, state_dict, darts.torch_names(net))

`load_torch_state_dict` renames each PyTorch key to a dnas variable path with a space's
rename function (`nb201.torch_name` for NAS-Bench-201's `TinyNetwork`, from xautodl;
`darts.torch_names(net)` for DARTS's `NetworkCIFAR`/`NetworkImageNet`, from quark0/darts;
each in its space's `convert` module) and moves
the layout (into each variable's dtype): conv weights OIHW -> HWIO, linear weights (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. Every dnas variable must
receive a value and every tensor must land somewhere (`num_batches_tracked` aside), with
equal shapes; anything else is an error naming the key.
"""

from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

# PyTorch BatchNorm2d field -> dnas BatchNorm variable.
TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _layout(value: np.ndarray, path: tuple) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 4:  # conv: OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if path[-1] == "kernel" and value.ndim == 2:  # linear: (out, in) -> (in, out)
    return value.T
  return value


def load_torch_state_dict(net: nnx.Module, state_dict: Mapping[str, np.ndarray],
                          rename: Callable[[str], str | None]) -> nnx.Module:
  """Writes a PyTorch state dict ({name: array}) into `net` in place; returns `net`.

  `rename(torch_key)` gives the dnas path ("cells.0.layers.1.conv.kernel"), or None for
  a tensor with no dnas counterpart (e.g. `num_batches_tracked`)."""
  state = nnx.state(net)
  flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  filled = set()
  for key, value in state_dict.items():
    target = rename(key)
    if target is None:
      continue
    if target not in flat:
      raise KeyError(f"{key} -> {target}: the dnas network has no such variable")
    current = flat[target].get_value()
    value = _layout(np.asarray(value, current.dtype), tuple(target.split(".")))
    want = current.shape
    if value.shape != tuple(want):
      raise ValueError(f"{key} -> {target}: shape {value.shape}, the dnas variable has {want}")
    flat[target].set_value(np.asarray(value))
    filled.add(target)
  missing = sorted(set(flat) - filled)
  if missing:
    raise KeyError(f"{len(missing)} dnas variables got no value, e.g. {missing[0]}")
  nnx.update(net, state)
  return net
