"""DARTS's PyTorch names (quark0/darts's `model.py` and `model_search.py`) as dnas
variable paths, for `dnas.convert.load_torch_state_dict`."""

import re
from collections.abc import Callable

from flax import nnx

from dnas.convert import TORCH_BN


def torch_names(net: nnx.Module) -> Callable[[str], str | None]:
  """The rename function for quark0/darts keys into `net`: the final `NetworkCIFAR` /
  `NetworkImageNet` (`model.py`) into dnas's of the same genotype, or the search supernet
  (`model_search.py`'s `Network`; its alphas, not in its state dict, go under the keys
  `alphas_normal` and `alphas_reduce`) into `darts.Network`. An op's `op.<i>` index names a different part in a SepConv (two
  ReLU-dw-pw-BN blocks) than in a DilConv, which `net`'s own variable names tell apart."""
  have = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(net))}

  def bn(prefix, field):
    return f"{prefix}.{TORCH_BN[field]}"

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
      field = "kernel" if m[3] == "weight" and _is_conv(key) else TORCH_BN.get(m[3], m[3])
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
