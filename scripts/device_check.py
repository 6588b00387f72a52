"""One-shot device check: the figures a GPU (or TPU) user asks first, one JSON line a case.

python scripts/device_check.py [--out=device_check.jsonl] [--budget_s=540] [--cases=...]
python scripts/device_check.py --tiny          # CPU smoke test of every case (the test suite)

Cases run in priority order, each on its own, so that a failure or the time budget stops
only what comes after it.

Cases, in order:
  first        first-order DARTS search step at CIFAR-10 shapes (C=16, 8 cells, batch 64)
  retrain      NetworkCIFAR(DARTS_V2, C=36, 20 cells, auxiliary, drop path 0.2), batch 96
  second_fd    DARTS Eq. 8 search step, CIFAR-10 shapes
  second       exact second-order search step (HVP with per-cell recomputation)
  bf16         the first-order step with bfloat16 activations
  pc_darts     PC-DARTS (K=4) first-order step at its own batch of 256
  digits       the default `python -m dnas.search` (digits, 8 epochs), wall time in-process

Each search or training case reports: compile_s (trace + lower + compile), step_s (median
of blocked steps), host_ms (median time for a step call to return: Python, flattening
and dispatch; the device is busy meanwhile when steps are queued back to back),
pipelined_step_s (steps queued without blocking, divided by their count), the device's
peak memory where the backend reports it (the process's peak so far), and images_s. Random inputs (no data needed)
except `digits`, which runs the real search on the embedded data.
"""

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from dnas import bilevel, cpu, hypergrad, loop, utils  # noqa: E402
from dnas.spaces import darts  # noqa: E402

CASES = ("first", "retrain", "second_fd", "second", "bf16", "pc_darts", "digits")
_CASES = flags.DEFINE_list("cases", list(CASES), "Cases to run, in this order.")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
_BUDGET = flags.DEFINE_float("budget_s", 540.0, "Skip the cases that start after this many "
                             "seconds (a lent GPU has about 10 minutes a command).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per case (after one warm-up).")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny shapes and four op kinds: a CPU smoke test.")

def _shapes(tiny: bool) -> dict:
  if tiny:  # compile time grows with cells x nodes x ops: one node, three op kinds
    return dict(C=4, layers=2, steps=1, multiplier=1, image=(8, 8, 3), batch=8,
                retrain_C=4, retrain_layers=2, retrain_batch=8, pc_batch=16,
                primitives=("none", "max_pool_3x3", "sep_conv_3x3"), auxiliary=False)
  return dict(C=16, layers=8, steps=4, multiplier=4, image=(32, 32, 3), batch=64,
              retrain_C=36, retrain_layers=20, retrain_batch=96, pc_batch=256,
              primitives=darts.PRIMITIVES, auxiliary=True)


def _peak_memory_gib():
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None  # the CPU backend reports none
  return round(stats["peak_bytes_in_use"] / 2**30, 3)


def _batch(rng, n, image, classes=10, dtype=jnp.float32):
  return dict(image=jnp.asarray(rng.standard_normal((n,) + image), dtype),
              label=jnp.asarray(rng.integers(0, classes, n), jnp.int32))


def _time_steps(run, state, steps: int) -> dict:
  """run(state) -> (state, metrics), compiled; state donated. Blocked and queued timings."""
  state, _ = run(state)
  jax.block_until_ready(state)
  blocked, host = [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = run(state)
    host.append(time.perf_counter() - t0)
    jax.block_until_ready((state, metrics))
    blocked.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = run(state)
  jax.block_until_ready((state, metrics))
  pipelined = (time.perf_counter() - t0) / steps
  return dict(step_s=round(float(np.median(blocked)), 4),
              host_ms=round(1e3 * float(np.median(host)), 2),
              pipelined_step_s=round(pipelined, 4), steps=steps)


def search_case(name: str, s: dict, *, order="first", dtype=None, pc=False, batch=None):
  batch = batch or s["batch"]
  net = darts.Network(s["C"], 10, s["layers"], s["steps"], s["multiplier"],
                      in_channels=s["image"][-1],
                      primitives=s["primitives"], partial_channels=4 if pc else 1,
                      edge_normalization=pc, rngs=nnx.Rngs(0))
  schedule = bilevel.per_epoch_cosine(0.025, 0.001, 50, 390)
  w_tx, a_tx = bilevel.make_w_tx(schedule), bilevel.make_a_tx()
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  hg = hypergrad.from_order(order, bilevel.make_w_tx(schedule, grad_clip=None),
                            remat=order == "second")
  # As `dnas.search` runs it: one program off the CPU (a few, split, on CPU for the
  # second-order methods), the state carried as a few stacked buffers off the CPU
  # (`loop.Flat`; split steps convert at each call, so they take the plain leaves).
  execution = bilevel.Execution(dtype=dtype)
  split = execution.split(order)
  # Split, the steps are made of jitted pieces; otherwise the pure step is jitted over the
  # flat state below (a pure step run unjitted would be eager, op by op).
  step, _ = bilevel.make_search_steps(graphdef, w_tx, a_tx, hypergrad=hg,
                                      execution=execution._replace(jit=split))
  flat = loop.Flat(state, stack=False if split else None)
  state = flat.leaves(state)
  rng = np.random.default_rng(0)
  bt, bv = _batch(rng, batch, s["image"]), _batch(rng, batch, s["image"])
  t0, compiled_before = time.perf_counter(), len(cpu.COMPILE_LOG)
  if not split:
    step = flat.jit(step).lower(state, bt, bv).compile()
  else:  # split pieces compile on their first call: count that call (one step) too
    step = flat.wrap(step)
    state, _ = step(state, bt, bv)
    jax.block_until_ready(state)
  out = dict(case=name, order=order, batch=batch, C=s["C"], layers=s["layers"],
             image=list(s["image"]), dtype=str(jnp.dtype(dtype or jnp.float32)),
             compile_s=round(time.perf_counter() - t0, 2),
             programs=len(cpu.COMPILE_LOG) - compiled_before if split else 1)
  out.update(_time_steps(lambda st: step(st, bt, bv), state, _STEPS.value))
  out["images_s"] = round(batch / out["step_s"], 1)
  return out


def retrain_case(s: dict):
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  net = darts.NetworkCIFAR(darts.DARTS_V2, s["retrain_C"], 10, s["retrain_layers"],
                           auxiliary=s["auxiliary"], drop_path_prob=0.2,
                           in_channels=s["image"][-1], rngs=nnx.Rngs(0))
  net.train()
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  tx = bilevel.make_w_tx(bilevel.per_epoch_cosine(0.025, 0.0, 600, 521))
  pure = train_lib.make_train_step(graphdef, tx, auxiliary_weight=0.4, label_smoothing=0.0,
                                   jit=False)

  def tree_step(state, batch, key, p):  # as `dnas.train` runs it, over a flat state
    *state, metrics = pure(*state, batch, key, p)
    return tuple(state), metrics
  batch = _batch(np.random.default_rng(0), s["retrain_batch"], s["image"])
  key, p = jax.random.key(0), jnp.float32(0.2)
  flat = loop.Flat((params, stats, tx.init(params)))
  state = flat.leaves((params, stats, tx.init(params)))
  t0 = time.perf_counter()
  compiled = flat.jit(tree_step).lower(state, batch, key, p).compile()
  out = dict(case="retrain", genotype="DARTS_V2", batch=s["retrain_batch"], C=s["retrain_C"],
             layers=s["retrain_layers"], auxiliary=s["auxiliary"],
             compile_s=round(time.perf_counter() - t0, 2))

  out.update(_time_steps(lambda state: compiled(state, batch, key, p), state, _STEPS.value))
  out["images_s"] = round(s["retrain_batch"] / out["step_s"], 1)
  return out


def digits_case(tiny: bool):
  from dnas import search_lib  # pylint: disable=g-import-not-at-top
  from dnas.configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  if tiny:
    config.model.update(C=4, layers=2, steps=1, multiplier=1,
                        primitives=("none", "max_pool_3x3", "sep_conv_3x3"))
    config.search.update(epochs=1, batch_size=8)
    config.max_steps_per_epoch = 2
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    search_lib.run_search(config, workdir, progress=False)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      last = json.loads(f.read().splitlines()[-1])
  return dict(case="digits", wall_s=round(wall, 1), epochs=config.search.epochs,
              valid_acc=round(last["valid_acc"], 4), search_wall_time_s=round(last["wall_time"], 1))


def run_case(name: str, s: dict, tiny: bool) -> dict:
  if name == "first":
    return search_case("first", s)
  if name == "retrain":
    return retrain_case(s)
  if name == "second_fd":
    return search_case("second_fd", s, order="second_fd")
  if name == "second":
    return search_case("second", s, order="second")
  if name == "bf16":
    return search_case("bf16", s, dtype=jnp.bfloat16)
  if name == "pc_darts":
    return search_case("pc_darts", s, pc=True, batch=s["pc_batch"])
  return digits_case(tiny)


def main(argv):
  del argv
  bad = [c for c in _CASES.value if c not in CASES]
  if bad:
    print(f"device_check: unknown case {bad[0]!r}; valid: {', '.join(CASES)}", file=sys.stderr)
    sys.exit(2)
  utils.configure_xla()
  s = _shapes(_TINY.value)
  start = time.perf_counter()
  device = jax.devices()[0]
  header = dict(case="device", backend=jax.default_backend(), device_kind=device.device_kind,
                devices=jax.device_count(), jax=jax.__version__, tiny=_TINY.value,
                date=time.strftime("%Y-%m-%d"))
  emit(header)
  for name in _CASES.value:
    if time.perf_counter() - start > _BUDGET.value:
      out = dict(case=name, skipped=f"time budget of {_BUDGET.value:.0f} s spent")
    else:
      t0 = time.perf_counter()
      try:
        out = run_case(name, s, _TINY.value)
      except Exception as e:  # pylint: disable=broad-except
        out = dict(case=name, error=f"{type(e).__name__}: {str(e).strip()[:300]}")
      out["wall_s"] = out.get("wall_s", round(time.perf_counter() - t0, 1))
      # The process's peak so far (cases run in order in one process): exact for the
      # first case, an upper bound for the later ones.
      out["process_peak_device_gib"] = _peak_memory_gib()
    emit(out)


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  app.run(main)
