"""dnas.convert: a PyTorch-layout state dict of NAS-Bench-201's TinyNetwork loads into the
dnas network (the comparison with the reference itself is scripts/compare_reference.py)."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from dnas import convert
from dnas.spaces import darts, nb201

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def torch_state_dict(net) -> dict:
  """The reference's (xautodl) keys and layouts for a dnas TinyNetwork: the inverse of
  nb201.torch_name, written out by hand from the reference's module names."""
  out = {}
  for path, v in nnx.to_flat_state(nnx.state(net)):
    p, x = ".".join(map(str, path)), np.asarray(v.get_value())
    rules = [(r"^stem\.layers\.0\.kernel$", "stem.0.weight"),
             (r"^stem\.layers\.1\.(\w+)$", lambda m: f"stem.1.{_BN[m[1]]}"),
             (r"^lastact_bn\.(\w+)$", lambda m: f"lastact.0.{_BN[m[1]]}"),
             (r"^classifier\.kernel$", "classifier.weight"),
             (r"^classifier\.bias$", "classifier.bias"),
             (r"^(.*)\.downsample\.layers\.1\.kernel$", lambda m: f"{m[1]}.downsample.1.weight"),
             (r"^(.*)\.conv\.kernel$", lambda m: f"{m[1]}.op.1.weight"),
             (r"^(.*)\.bn\.(\w+)$", lambda m: f"{m[1]}.op.2.{_BN[m[2]]}")]
    for pattern, name in rules:
      m = re.match(pattern, p)
      if m:
        key = name(m) if callable(name) else name
        break
    else:
      raise AssertionError(p)
    out[key] = x.transpose(3, 2, 0, 1) if x.ndim == 4 else (x.T if x.ndim == 2 else x)
    if key.endswith("running_var"):
      out[key.replace("running_var", "num_batches_tracked")] = np.int64(0)
  return out


def test_state_dict_loads_into_a_differently_initialised_network():
  src = nb201.TinyNetwork(ARCH, 4, 1, 10, rngs=nnx.Rngs(0))
  for _, v in nnx.to_flat_state(nnx.state(src, nnx.BatchStat)):  # non-default statistics
    v.set_value(v.get_value() + 0.3)
  dst = nb201.TinyNetwork(ARCH, 4, 1, 10, rngs=nnx.Rngs(1))
  convert.load_torch_state_dict(dst, torch_state_dict(src), nb201.torch_name)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  src.eval()
  dst.eval()
  np.testing.assert_array_equal(src(x), dst(x))


def test_mismatches_are_errors_naming_the_key():
  net = nb201.TinyNetwork(ARCH, 4, 1, 10, rngs=nnx.Rngs(0))
  sd = torch_state_dict(net)
  with pytest.raises(KeyError, match="not a key of NAS-Bench-201's TinyNetwork"):
    convert.load_torch_state_dict(net, dict(sd, **{"head.weight": np.zeros(3)}),
                                  nb201.torch_name)
  bad = dict(sd, **{"classifier.weight": np.zeros((10, 17), np.float32)})
  with pytest.raises(ValueError, match="classifier.weight -> classifier.kernel: shape"):
    convert.load_torch_state_dict(net, bad, nb201.torch_name)
  del sd["stem.0.weight"]
  with pytest.raises(KeyError, match="got no value, e.g. stem.layers.0.kernel"):
    convert.load_torch_state_dict(net, sd, nb201.torch_name)


def test_darts_reference_keys_fill_network_cifar():
  # Every key of quark0/darts's NetworkCIFAR (DARTS_V2, C=8, 5 cells, auxiliary head;
  # the key list and shapes recorded from the reference, tests/data) lands on a dnas
  # variable of the same network, and every variable gets one; conv kernels OIHW -> HWIO.
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(__file__), "data",
                         "darts_networkcifar_keys.json")) as f:
    keys = json.load(f)["keys"]
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in keys.items()}
  net = darts.NetworkCIFAR(darts.DARTS_V2, 8, 10, 5, auxiliary=True, rngs=nnx.Rngs(0))
  convert.load_torch_state_dict(net, sd, darts.torch_names(net))
  got = nnx.state(net)
  np.testing.assert_array_equal(got["stem"]["layers"][0]["kernel"][...],
                                sd["stem.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["cells"][0]["ops"][0]["block2"]["pw"]["kernel"][...],
                                sd["cells.0._ops.0.op.6.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["auxiliary_head"]["bn2"]["var"][...],
                                sd["auxiliary_head.features.6.running_var"])
  np.testing.assert_array_equal(got["classifier"]["kernel"][...], sd["classifier.weight"].T)
