"""PyTorch checkpoints of the reference code into dnas networks.

  state_dict = {k: v.numpy() for k, v in torch.load("weights.pt").items()}
  net = nb201.TinyNetwork(arch, 16, 5, 10, rngs=nnx.Rngs(0))
  convert.load_torch_state_dict(net, state_dict, convert.nb201_name)

  net = darts.NetworkCIFAR(darts.DARTS_V2, 36, 10, 20, auxiliary=True, rngs=nnx.Rngs(0))
  convert.load_torch_state_dict(net, state_dict, convert.darts_names(net))

`load_torch_state_dict` renames each PyTorch key to a dnas variable path with a space's
rename function (`nb201_name` for NAS-Bench-201's `TinyNetwork`, from xautodl;
`darts_names(net)` for DARTS's `NetworkCIFAR`/`NetworkImageNet`, from quark0/darts) and moves
the layout (into each variable's dtype): conv weights OIHW -> HWIO, linear weights (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. Every dnas variable must
receive a value and every tensor must land somewhere (`num_batches_tracked` aside), with
equal shapes; anything else is an error naming the key.
"""

import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


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


def nb201_name(key: str) -> str | None:
  """xautodl `TinyNetwork` key -> dnas `nb201.TinyNetwork` path."""
  if key.endswith("num_batches_tracked"):
    return None
  rules = [
      (r"^stem\.0\.weight$", "stem.layers.0.kernel"),
      (r"^stem\.1\.(\w+)$", lambda m: f"stem.layers.1.{_BN[m[1]]}"),
      (r"^lastact\.0\.(\w+)$", lambda m: f"lastact_bn.{_BN[m[1]]}"),
      (r"^classifier\.weight$", "classifier.kernel"),
      (r"^classifier\.bias$", "classifier.bias"),
      (r"^(.*)\.downsample\.1\.weight$", lambda m: f"{m[1]}.downsample.layers.1.kernel"),
      # ReLUConvBN: op = Sequential(ReLU, Conv2d, BatchNorm2d)
      (r"^(.*)\.op\.1\.weight$", lambda m: f"{m[1]}.conv.kernel"),
      (r"^(.*)\.op\.1\.bias$", lambda m: f"{m[1]}.conv.bias"),
      (r"^(.*)\.op\.2\.(\w+)$", lambda m: f"{m[1]}.bn.{_BN[m[2]]}"),
      # ResNetBasicblock's other-width shortcut is a ReLUConvBN too (downsample.op.*)
  ]
  for pattern, out in rules:
    m = re.match(pattern, key)
    if m:
      return out(m) if callable(out) else out
  raise KeyError(f"{key}: not a key of NAS-Bench-201's TinyNetwork")


def darts_names(net: nnx.Module) -> Callable[[str], str | None]:
  """The rename function for quark0/darts keys into `net`: the final `NetworkCIFAR` /
  `NetworkImageNet` (`model.py`) into dnas's of the same genotype, or the search supernet
  (`model_search.py`'s `Network`; its alphas, not in its state dict, go under the keys
  `alphas_normal` and `alphas_reduce`) into `darts.Network`. An op's `op.<i>` index names a different part in a SepConv (two
  ReLU-dw-pw-BN blocks) than in a DilConv, which `net`'s own variable names tell apart."""
  have = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(net))}

  def bn(prefix, field):
    return f"{prefix}.{_BN[field]}"

  def op_part(prefix: str, rest: str) -> str | None:
    m = re.match(r"^op\.(\d)\.(\w+)$", rest)
    if m:  # SepConv: ReLU dw pw BN ReLU dw pw BN; DilConv: ReLU dw pw BN
      i, field = int(m[1]), m[2]
      if f"{prefix}.block1.dw.kernel" in have:
        block, i = (1, i) if i < 4 else (2, i - 4)
        prefix = f"{prefix}.block{block}"
      return f"{prefix}.{['', 'dw', 'pw'][i]}.kernel" if i in (1, 2) else bn(f"{prefix}.bn", field)
    m = re.match(r"^(conv_[12])\.weight$", rest)  # FactorizedReduce
    if m:
      return f"{prefix}.{m[1]}.kernel"
    m = re.match(r"^bn\.(\w+)$", rest)
    if m:
      return bn(f"{prefix}.bn", m[1])
    m = re.match(r"^1\.(\w+)$", rest)  # the search supernet's pooling: (pool, BN)
    if m:
      return bn(f"{prefix}.layers.1", m[1])
    return None

  def rename(key: str) -> str | None:
    if key.endswith("num_batches_tracked"):
      return None
    if key in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
      return key  # the supernet's architecture parameters, saved beside its state dict
    m = re.match(r"^(stem\d?)\.(\d)\.(\w+)$", key)  # stem (CIFAR) or stem0/stem1 (ImageNet)
    if m:
      field = "kernel" if m[3] == "weight" and _is_conv(key) else _BN.get(m[3], m[3])
      return f"{m[1]}.layers.{m[2]}.{field}"
    m = re.match(r"^(cells\.\d+\._ops\.\d+(?:\._ops\.\d+)?)\.(.+)$", key)
    if m and (out := op_part(m[1].replace("._ops.", ".ops."), m[2])):
      return out
    m = re.match(r"^(cells\.\d+\.preprocess0)\.(conv_[12]\.weight|bn\.\w+)$", key)
    if m:  # FactorizedReduce after a reduction cell
      return op_part(m[1], m[2])
    m = re.match(r"^(cells\.\d+\.preprocess[01])\.op\.(\d)\.(\w+)$", key)
    if m:  # ReLUConvBN
      return f"{m[1]}.conv.kernel" if m[2] == "1" else bn(f"{m[1]}.bn", m[3])
    m = re.match(r"^auxiliary_head\.features\.(\d)\.(\w+)$", key)
    if m:  # ReLU, AvgPool, Conv 1x1, BN, ReLU, Conv 2x2, BN
      part = {"2": "conv1", "3": "bn1", "5": "conv2", "6": "bn2"}[m[1]]
      return f"auxiliary_head.{part}.kernel" if part.startswith("conv") else bn(
          f"auxiliary_head.{part}", m[2])
    m = re.match(r"^(auxiliary_head\.)?classifier\.(weight|bias)$", key)
    if m:
      return f"{m[1] or ''}classifier.{'kernel' if m[2] == 'weight' else 'bias'}"
    raise KeyError(f"{key}: not a key of DARTS's networks")
  return rename


def _is_conv(key: str) -> bool:
  # In the stems, index 0 (CIFAR) or 1 and 4 (ImageNet's stem0 ReLU-free convs) are convs.
  return bool(re.match(r"^stem\.0\.|^stem0\.(0|3)\.|^stem1\.1\.", key))
