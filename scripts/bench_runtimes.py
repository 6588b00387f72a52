"""One network in each runtime, side by side: JAX (XLA) against ONNX Runtime.

python scripts/bench_runtimes.py [--networks=proxyless_mobile,FBNet_B,DARTS_V2] \
    [--image=224 --batch=1] [--rounds=5 --repeats=50]

Each network (random weights, eval mode) is compiled in each runtime (`dnas.deploy`),
checked for equal outputs, then timed in `--rounds` interleaved rounds of `--repeats`
calls; prints one JSON line per network with the median of the round medians per
runtime, their ratio, the largest output difference and the ONNX conversion time.
Mobile networks are built at `--image` (3 channels, 1000 classes); DARTS_V2 is the
CIFAR network (C=36, 20 cells, 32x32, 10 classes).
"""

import json
import time

import numpy as np
from absl import app, flags
from flax import nnx

from dnas import latency, utils
from dnas.deploy import compile_fn, inference_fn
from dnas.spaces import darts
from dnas.spaces.darts.final import NetworkCIFAR
from dnas.spaces.mobile import PUBLISHED, MobileNet

_NETWORKS = flags.DEFINE_list("networks", ["proxyless_mobile", "proxyless_cpu", "FBNet_A",
                                           "FBNet_C", "DARTS_V2"], "Networks.")
_IMAGE = flags.DEFINE_integer("image", 224, "Mobile networks' input resolution.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Calls per runtime and round.")


def _network(name):
  if name == "DARTS_V2":
    net = NetworkCIFAR(darts.DARTS_V2, 36, 10, 20, rngs=nnx.Rngs(0))
    return net, (_BATCH.value, 32, 32, 3)
  return (MobileNet(PUBLISHED[name], 1000, 3, rngs=nnx.Rngs(0)),
          (_BATCH.value, _IMAGE.value, _IMAGE.value, 3))


def main(argv):
  del argv
  utils.configure_xla()
  for name in _NETWORKS.value:
    net, shape = _network(name)
    net.eval()
    fn = inference_fn(net)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = time.perf_counter()
    ort = compile_fn("onnxruntime", fn, shape)
    convert_s = time.perf_counter() - t
    jx = compile_fn("jax", fn, shape)
    diff = float(np.max(np.abs(ort.call(x) - np.asarray(jx.call(x)))))
    times = {"jax": [], "onnxruntime": []}
    for _ in range(_ROUNDS.value):
      for runtime, c in (("jax", jx), ("onnxruntime", ort)):
        times[runtime].append(latency.time_call(c.call, x, repeats=_REPEATS.value)["median"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(json.dumps(dict(network=name, shape=list(shape), jax_ms=round(med["jax"], 4),
                          onnxruntime_ms=round(med["onnxruntime"], 4),
                          jax_over_ort=round(med["jax"] / med["onnxruntime"], 2),
                          max_abs_diff=diff, onnx_convert_s=round(convert_s, 2),
                          cpu=latency.cpu_model())), flush=True)


if __name__ == "__main__":
  app.run(main)
