"""NAS-Bench-201's PyTorch names (xautodl's `TinyNetwork`) as dnas variable paths, for
`dnas.convert.load_torch_state_dict`."""

import re

from dnas.convert import TORCH_BN


def torch_name(key: str) -> str | None:
  """xautodl `TinyNetwork` key -> dnas `nb201.TinyNetwork` path."""
  if key.endswith("num_batches_tracked"):
    return None
  rules = [
      (r"^stem\.0\.weight$", "stem.layers.0.kernel"),
      (r"^stem\.1\.(\w+)$", lambda m: f"stem.layers.1.{TORCH_BN[m[1]]}"),
      (r"^lastact\.0\.(\w+)$", lambda m: f"lastact_bn.{TORCH_BN[m[1]]}"),
      (r"^classifier\.weight$", "classifier.kernel"),
      (r"^classifier\.bias$", "classifier.bias"),
      (r"^(.*)\.downsample\.1\.weight$", lambda m: f"{m[1]}.downsample.layers.1.kernel"),
      # ReLUConvBN: op = Sequential(ReLU, Conv2d, BatchNorm2d)
      (r"^(.*)\.op\.1\.weight$", lambda m: f"{m[1]}.conv.kernel"),
      (r"^(.*)\.op\.1\.bias$", lambda m: f"{m[1]}.conv.bias"),
      (r"^(.*)\.op\.2\.(\w+)$", lambda m: f"{m[1]}.bn.{TORCH_BN[m[2]]}"),
      # ResNetBasicblock's other-width shortcut is a ReLUConvBN too (downsample.op.*)
  ]
  for pattern, out in rules:
    m = re.match(pattern, key)
    if m:
      return out(m) if callable(out) else out
  raise KeyError(f"{key}: not a key of NAS-Bench-201's TinyNetwork")
