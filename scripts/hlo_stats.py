"""Counts the StableHLO ops of a search step lowered for a platform, from any host.

python scripts/hlo_stats.py --config=dnas/configs/cifar10_darts.py --platforms=cuda,tpu,cpu

The step is the whole first-order (or `--order`) search step as one program, as a GPU or
TPU run compiles it, at the config's batch and CIFAR's 32x32x3 images. One JSON line per
platform: the total op count, the op kinds that show which kernels were lowered
(`slice`: k*k shift loops of the CPU fast path; `convolution` with a feature group count
> 1: XLA's depthwise conv; `reduce_window`/`select_and_scatter`: XLA's pools), the
`dot_general`s and their distinct shapes, and the HIGHEST-precision identity matmuls of
the CPU fusion barriers. Nothing is compiled or run.
"""

import collections
import json
import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from dnas import bilevel, hypergrad, search_lib, utils

_CONFIG = config_flags.DEFINE_config_file("config", "dnas/configs/cifar10_darts.py", "Config.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cuda"], "Platforms to lower for.")
_ORDER = flags.DEFINE_enum("order", "first", list(hypergrad.ORDERS), "Hypergradient.")
_IMAGE = flags.DEFINE_string("image", "32,32,3", "H,W,C of the input images.")


def op_stats(text: str) -> dict:
  ops = collections.Counter(re.findall(r"stablehlo\.(\w+)", text))
  dots = [l for l in text.splitlines() if "stablehlo.dot_general" in l]
  shapes = {re.sub(r"%\S+", "", l.split(":", 1)[-1]).strip() for l in dots}
  grouped = [int(n) for n in re.findall(r"feature_group_count = (\d+)", text)]
  return dict(ops=sum(ops.values()), slice=ops["slice"], dot_general=ops["dot_general"],
              dot_shapes=len(shapes), identity_matmuls=sum("HIGHEST" in l for l in dots),
              convolution=ops["convolution"], grouped_convolution=sum(g > 1 for g in grouped),
              reduce_window=ops["reduce_window"], select_and_scatter=ops["select_and_scatter"],
              case=ops["case"])


def main(argv):
  del argv
  utils.configure_xla()
  config = _CONFIG.value
  s = config.search
  h, w, c = (int(v) for v in _IMAGE.value.split(","))
  net = search_lib.make_supernet(config, 10, c)
  w_tx = bilevel.make_w_tx(bilevel.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, 100),
                           s.momentum, s.weight_decay, s.grad_clip)
  a_tx = bilevel.make_a_tx(s.a_lr, s.a_b1, s.a_b2, s.a_weight_decay)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  hg = hypergrad.from_order(_ORDER.value, w_tx, fd_r=s.fd_r, remat=s.hvp_remat)
  step, _ = bilevel.make_search_steps(graphdef, w_tx, a_tx, hypergrad=hg,
                                      execution=bilevel.Execution(jit=False, programs="one"))
  batch = dict(image=jax.ShapeDtypeStruct((s.batch_size, h, w, c), jnp.float32),
               label=jax.ShapeDtypeStruct((s.batch_size,), jnp.int32))
  t0 = time.perf_counter()
  traced = jax.jit(step).trace(state, batch, batch)
  trace_s = time.perf_counter() - t0
  for platform in _PLATFORMS.value:
    t0 = time.perf_counter()
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    print(json.dumps(dict(platform=platform, order=_ORDER.value, batch=s.batch_size,
                          trace_s=round(trace_s, 1),
                          lower_s=round(time.perf_counter() - t0, 1), **op_stats(text))),
          flush=True)


if __name__ == "__main__":
  app.run(main)
