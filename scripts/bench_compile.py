"""Time to first step: trace, lower and compile seconds, StableHLO op counts and step time.

python scripts/bench_compile.py [--cases=digits,cifar_first,cifar_second_fd,cifar_second,cifar_pc_darts,cifar_retrain,nb201_cifar]
python scripts/bench_compile.py --cases=digits --repeats=5 --platforms=cpu,cuda,tpu
python scripts/bench_compile.py --cases=digits,cifar_retrain --config=dnas/configs/tiny.py  # smoke
python scripts/bench_compile.py --cases=cifar_retrain,nb201_cifar --scan_cells=false  # the loop

Each case builds its step as the search (or retraining) runs it on this backend
(`search_lib.compiled_steps`: one program, or split pieces for the second order on CPU;
`train_lib`'s step for retraining), calls it once on random inputs while
`execution.CompileWatch` counts what is traced, lowered and compiled, then times
`--repeats` more calls (median). The whole step as one program is also lowered, without
compiling, for each of `--platforms`, and its StableHLO ops counted. One JSON line per
case. The persistent compile cache is off unless DNAS_JAX_CACHE names a directory.
`--config` replaces every case's config file (its order and retraining options stay).

  digits           the default search (dnas/configs/digits.py, beta-DARTS, 8x8 digits)
  cifar_first      DARTS first order at CIFAR-10 shapes (cifar10_darts.py: C=16, 8 cells,
                   batch 64, 32x32x3)
  cifar_second_fd  the same, DARTS's finite-difference second order (Eq. 8)
  cifar_second     the same, the exact second order
  cifar_pc_darts   PC-DARTS (cifar10_pc_darts.py: batch 256, partial channels)
  cifar_retrain    retraining DARTS_V2 as NetworkCIFAR (C=36, 20 cells, batch 96)
  nb201_cifar      the NAS-Bench-201 supernet at CIFAR-10 shapes, DARTS first order
                   (nb201_cifar10.py: C=16, 3 stages of 5 cells, batch 64)

`--scan_cells=false` traces every case inside `dnas.layers.unrolled()`: consecutive
identical cells as a Python loop instead of one `lax.scan` (before/after in one run).
"""

import contextlib
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from dnas import (bilevel, cli, config as config_lib, execution, hypergrad, layers, methods,
                  optim, parallel, search_lib, spaces, train_lib, utils)
from dnas.configs import cifar10_darts, cifar10_pc_darts, digits, nb201_cifar10
from dnas.data.pipeline import DatasetInfo

CASES = {
    "digits": (digits.get_config, {}, (8, 8, 1)),
    "cifar_first": (cifar10_darts.get_config, {}, (32, 32, 3)),
    "cifar_second_fd": (cifar10_darts.get_config, {"order": "second_fd"}, (32, 32, 3)),
    "cifar_second": (cifar10_darts.get_config, {"order": "second"}, (32, 32, 3)),
    "cifar_pc_darts": (cifar10_pc_darts.get_config, {}, (32, 32, 3)),
    "cifar_retrain": (cifar10_darts.get_config, {"retrain": True}, (32, 32, 3)),
    "nb201_cifar": (nb201_cifar10.get_config, {"order": "first"}, (32, 32, 3)),
}

_CASES = flags.DEFINE_list("cases", list(CASES), "Cases to run.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Replaces every case's config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the first.")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"],
                               "Platforms to lower the one-program step for (op counts).")
_SCAN = flags.DEFINE_bool("scan_cells", True, "Scan consecutive identical cells (false: "
                          "trace them as a loop, dnas.layers.unrolled).")


def _batch(shape, batch_size: int, classes: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return dict(image=jnp.asarray(rng.standard_normal((batch_size, *shape)), jnp.float32),
              label=jnp.asarray(rng.integers(0, classes, batch_size), jnp.int32))


def _spec(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _op_counts(fn, args) -> dict:
  traced = jax.jit(fn).trace(*args)
  return {p: traced.lower(lowering_platforms=(p,)).as_text().count("stablehlo.")
          for p in _PLATFORMS.value}


def _timed(step, carry, args) -> tuple[object, dict]:
  """Calls step(carry, *args) once under a CompileWatch, then `--repeats` times."""
  with execution.CompileWatch() as watch:
    carry, out = step(carry, *args)
    jax.block_until_ready(out)
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    carry, out = step(carry, *args)
    jax.block_until_ready((carry, out))
    times.append(time.perf_counter() - t0)
  return carry, dict(programs=watch.programs, cached=watch.cached,
                     trace_s=round(watch.trace_s, 2), lower_s=round(watch.lower_s, 2),
                     compile_s=round(watch.compile_s, 2), first_call_s=round(watch.seconds, 2),
                     step_ms=round(1000 * statistics.median(times), 1) if times else None)


def search_case(config, order: str | None, shape) -> dict:
  s = config.search
  if order:
    s.order = order
  info = DatasetInfo("", shape, 10, (), ())
  model = config_lib.space_section(config)
  net = spaces.get(config.space).supernet(model, info, nnx.Rngs(config.seed))
  steps_per_epoch = 100
  parts = methods.build(config, steps_per_epoch)
  schedule, w_tx, a_tx = search_lib.optimizers(config, steps_per_epoch, parts)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  mesh = parallel.make_mesh(1, 1)
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  hg = hypergrad.from_order(s.order, optim.make_w_tx(schedule, s.momentum, s.weight_decay,
                                                     grad_clip=None,
                                                     weight_decay_in_state=s.ada),
                            fd_r=s.fd_r, remat=s.hvp_remat)
  arch_loss = bilevel.arch_loss(None, *parts.terms) if parts.terms else None
  dtype = utils.compute_dtype(config)
  flat, step, _ = search_lib.compiled_steps(
      graphdef, state, w_tx, a_tx, order=s.order, hypergrad=hg, arch_loss=arch_loss,
      parts=parts, execution=execution.Execution(programs=s.programs, shardings=shardings,
                                                 dtype=dtype),
      weight_first=s.step_order == "weight_first")
  b = _batch(shape, s.batch_size, 10, 0)
  one, _ = bilevel.make_search_steps(
      graphdef, w_tx, a_tx, hypergrad=hg, arch_loss=arch_loss, relaxation=parts.relaxation,
      perturb=parts.perturb, extra_inputs=parts.extra_inputs,
      execution=execution.Execution(jit=False, programs="one", dtype=dtype))
  spec = _spec(state)
  _, timing = _timed(step, flat.leaves(state), (b, b))  # first: a cold trace
  ops = _op_counts(one, (spec, _spec(b), _spec(b)))
  return dict(method=config.method, order=s.order, batch=s.batch_size,
              split=execution.Execution(programs=s.programs).split(s.order), **timing,
              stablehlo_ops=ops)


def retrain_case(config, shape) -> dict:
  t = config.train
  info = DatasetInfo("", shape, 10, (), ())
  space = spaces.get(config.space)
  net = space.final(space.published["DARTS_V2"], config_lib.space_section(config), t, info,
                    nnx.Rngs(0))
  tx = optim.make_w_tx(optim.per_epoch_cosine(t.lr, t.lr_min, t.epochs, 100), t.momentum,
                       t.weight_decay, t.grad_clip, t.nesterov)
  net.train()
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  pure = train_lib.make_train_step(graphdef, tx, auxiliary_weight=t.auxiliary_weight,
                                   label_smoothing=t.label_smoothing,
                                   apply=space.final_apply, jit=False)

  def step(state, batch, key):
    *state, metrics = pure(*state, batch, key, t.drop_path_prob)
    return tuple(state), metrics
  state = (params, stats, tx.init(params))
  b, key = _batch(shape, t.batch_size, 10, 0), jax.random.key(0)
  spec, flat = _spec(state), execution.Flat(state)
  _, timing = _timed(flat.jit(step), flat.leaves(state), (b, key))  # first: a cold trace
  ops = _op_counts(step, (spec, _spec(b), key))
  return dict(network=t.network, C=t.C, layers=t.layers, batch=t.batch_size, **timing,
              stablehlo_ops=ops)


def main(argv):
  del argv
  utils.configure_xla()
  cli.enable_compilation_cache(os.environ.get("DNAS_JAX_CACHE", ""))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  for name in _CASES.value:
    if name not in CASES:
      raise app.UsageError(f"unknown case {name!r}; valid: {', '.join(CASES)}")
    get_config, opts, shape = CASES[name]
    config = _CONFIG.value.copy_and_resolve_references() if _CONFIG.value else get_config()
    t0 = time.perf_counter()
    with contextlib.nullcontext() if _SCAN.value else layers.unrolled():
      out = (retrain_case(config, shape) if opts.get("retrain")
             else search_case(config, opts.get("order"), shape))
    print(json.dumps(dict(case=name, device=jax.devices()[0].device_kind,
                          backend=jax.default_backend(), image=list(shape),
                          scan_cells=_SCAN.value, **out,
                          wall_s=round(time.perf_counter() - t0, 1))), flush=True)


if __name__ == "__main__":
  app.run(main)
