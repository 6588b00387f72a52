"""Times one DARTS search step (architecture step + weight step) at a config's shapes.

python scripts/bench_step.py --config=dnas/configs/cifar10_darts.py --orders=first,second,second_fd
python scripts/bench_step.py --devices=1,2,4,8 --dtypes=float32,bfloat16
python scripts/bench_step.py --config=dnas/configs/cifar10_darts.py --host_only

For each order, dtype and device count: trace+lower and compile time (reported apart,
per program, and summed in `trace_s` and `compile_s`; split steps (`--programs`, by
default the second-order methods) also report the first call of each phase: trace +
compile + one run), then the median of `--steps` timed steps of each phase and of the whole step; XLA's
temporary buffer size per phase; the process's peak RSS after compiling, and (Linux,
peak reset) while stepping; host time apart from device time: each phase's dispatch
(the call until it returns, the device still working) and the jit boundary alone with
the state as a tree, as the flat list of its leaves and as the stacked buffers that
the loops carry off the CPU (`host_jit_tree_ms`, `host_jit_flat_ms`,
`host_jit_stacked_ms`). Prints one JSON line per case. Random inputs of the
config's image shape (no data needed); the compile cache is off unless DNAS_JAX_CACHE
is set.

`--devices`: the phases run as SPMD programs over a data-parallel mesh of that many
devices with the config's global batch (strong scaling: the search's batch is a
hyperparameter); `speedup` = t(n0) / t(n) and `scaling_efficiency` = n0 t(n0) / (n t(n)),
n0 the smallest count asked for (normally 1). On a CPU host the devices are
`--xla_force_host_platform_device_count` slices of the same cores: the best possible
efficiency there is n0 / n (speed-up 1), and the shortfall is partitioning overhead. On
a GPU/TPU host they are real devices.
"""

import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dnas import bilevel, cli, cpu, hypergrad, loop, parallel, search_lib, utils

_CONFIG = config_flags.DEFINE_config_file("config", "dnas/configs/cifar10_darts.py", "Config.")
_ORDERS = flags.DEFINE_list("orders", ["first"], "Orders to time.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per phase (after one warm-up).")
_IMAGE = flags.DEFINE_string("image", "32,32,3", "H,W,C of the random input images.")
_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes.")
_DEVICES = flags.DEFINE_list("devices", [], "Device counts of the mesh (empty: no mesh, "
                             "one device, as before).")
_TRIM = flags.DEFINE_bool("malloc_trim", False, "Return freed heap memory to the OS after "
                          "compiling (what the search loop does), before stepping.")
_DTYPES = flags.DEFINE_list("dtypes", [], "Activation dtypes (empty: the config's).")
_HOST_ONLY = flags.DEFINE_bool("host_only", False, "Only the host time of the jit boundary "
                                "(tree, flat, stacked state); compiles no step.")
_PROGRAMS = flags.DEFINE_enum("programs", "auto", ["auto", "one", "split"],
                              "As config search.programs: one program per phase, or the "
                              "split pieces with one shared gradient program (auto: split "
                              "for the second-order methods).")


def _rss_gib(field="VmHWM"):
  """Peak resident memory of this process since start (or since `_reset_peak_rss`);
  field="VmRSS": the current one."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reset_peak_rss():
  """Linux: restart the VmHWM peak, so steps are measured apart from compilation."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _median_time(fn, steps):
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times)), times


def _median_ms(fn, calls=30):
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return round(1e3 * float(np.median(times)), 2)


def _dispatch_ms(fn, calls=3):
  """Median ms until `fn()` returns (the device may still be working), then waits."""
  outs, times = [], []
  for _ in range(calls):
    t = time.perf_counter()
    outs.append(fn())
    times.append(time.perf_counter() - t)
  jax.block_until_ready(outs)
  return round(1e3 * float(np.median(times)), 2)


def host_boundary_ms(state, bt, bv) -> dict:
  """Host time of one jit call with this state, apart from any device work: a program
  that only hands its (donated) state back, called with the state as a tree (as
  `make_search_steps`' own jit takes it), as the flat list of its leaves, and as the
  stacked buffers that the loops carry off the CPU (`loop.Flat`). Median ms per call;
  the call returns when dispatched."""
  out = {}
  tree_fn = jax.jit(lambda st, bt, bv: (st, jnp.float32(0)), donate_argnums=0)
  copy = lambda: jax.tree.map(jnp.copy, state)
  st = copy()
  st, _ = tree_fn(st, bt, bv)

  def tree_call():
    nonlocal st
    st, _ = tree_fn(st, bt, bv)
  out["host_jit_tree_ms"] = _median_ms(tree_call)
  for name, stack in (("flat", False), ("stacked", True)):
    flat = loop.Flat(state, stack=stack)
    fn = flat.jit(lambda st, bt, bv: (st, jnp.float32(0)))
    buffers = flat.leaves(copy())
    buffers, _ = fn(buffers, bt, bv)

    def call():
      nonlocal buffers
      buffers, _ = fn(buffers, bt, bv)
    out[f"host_jit_{name}_ms"] = _median_ms(call)
    out[f"{name}_buffers"] = len(buffers)
    if not stack:  # host work only; stacked, these are programs
      out["host_flatten_tree_ms"] = _median_ms(lambda: flat.leaves(state))
      out["host_unflatten_tree_ms"] = _median_ms(lambda: flat.tree(buffers))
  return out


def bench(config, order, steps, image, num_classes, dtype, devices=0):
  m, s = config.model, config.search
  h, w, c = image
  rng = np.random.default_rng(0)
  batch = lambda: dict(image=jnp.asarray(rng.standard_normal((s.batch_size, h, w, c)), jnp.float32),
                       label=jnp.asarray(rng.integers(0, num_classes, s.batch_size), jnp.int32))
  net = search_lib.make_supernet(config, num_classes, c)
  schedule = bilevel.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, 100)
  w_tx = bilevel.make_w_tx(schedule, s.momentum, s.weight_decay, s.grad_clip)
  a_tx = bilevel.make_a_tx(s.a_lr, s.a_b1, s.a_b2, s.a_weight_decay)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  hvp_remat = s.hvp_remat
  split = {"auto": order != "first", "one": False, "split": True}[_PROGRAMS.value]
  bt, bv = batch(), batch()
  out = dict(method=config.method, order=order, dtype=dtype,
             device=jax.devices()[0].device_kind,
             devices=devices or 1, batch=s.batch_size, image=list(image), C=m.C,
             layers=m.layers, remat=m.remat, hvp_remat=hvp_remat, split=split)
  jit = {"arch": {}, "weight": {}}
  if devices:
    mesh = parallel.make_mesh(devices)
    shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
    state = parallel.put_state(state, shardings[0])
    bt, bv = (parallel.put_batch(jax.device_get(b), mesh) for b in (bt, bv))
    jit = {"arch": bilevel.jit_shardings(shardings, 2),
           "weight": bilevel.jit_shardings(shardings, 1)}
  if _HOST_ONLY.value:  # the jit boundary alone: nothing of the step is compiled
    out.update(host_boundary_ms(state, bt, bv))
    return out
  hg = hypergrad.from_order(order, bilevel.make_w_tx(schedule, s.momentum, s.weight_decay,
                                                     grad_clip=None),
                            fd_r=s.fd_r, remat=hvp_remat)
  phase_kwargs = dict(hypergrad=hg, dtype=utils.DTYPES[dtype])
  compiled = {}
  if split:
    # The phases run as separate programs (`Execution(programs="split")`), each compiled
    # ahead of its first call and trimmed: the first call is trace + compile + one run.
    arch_step, weight_step = bilevel.make_phase_steps(
        graphdef, w_tx, a_tx, piece=bilevel.split_piece(shardings if devices else None,
                                                        donate=False), **phase_kwargs)
    compiled = {"arch": arch_step, "weight": weight_step}
    del cpu.COMPILE_LOG[:]
    for name, args in (("arch", (state, bt, bv)), ("weight", (state, bt))):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled[name](*args))
      out[f"{name}_first_call_s"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_first_calls_gib"] = round(_rss_gib(), 2)
    # Each program once (shared ones are compiled by their first caller).
    out["programs"] = [dict(name=c["name"], trace_s=round(c["trace_s"], 1),
                            compile_s=round(c["compile_s"], 1)) for c in cpu.COMPILE_LOG]
    out["trace_s"] = round(sum(c["trace_s"] for c in cpu.COMPILE_LOG), 1)
    out["compile_s"] = round(sum(c["compile_s"] for c in cpu.COMPILE_LOG), 1)
  else:
    arch_step, weight_step = bilevel.make_phase_steps(graphdef, w_tx, a_tx, **phase_kwargs)
    for name, fn, args in (("arch", arch_step, (state, bt, bv)),
                           ("weight", weight_step, (state, bt))):
      t0 = time.perf_counter()
      lowered = jax.jit(fn, **jit[name]).lower(*args)
      t1 = time.perf_counter()
      compiled[name] = lowered.compile()
      t2 = time.perf_counter()
      out[f"{name}_trace_s"], out[f"{name}_compile_s"] = round(t1 - t0, 1), round(t2 - t1, 1)
      out["trace_s"] = round(out.get("trace_s", 0) + t1 - t0, 1)
      out["compile_s"] = round(out.get("compile_s", 0) + t2 - t1, 1)
      mem = compiled[name].memory_analysis()
      if mem is not None:
        out[f"{name}_xla_temp_gib"] = round(mem.temp_size_in_bytes / 2**30, 2)
    out["peak_rss_compile_gib"] = round(_rss_gib(), 2)
  if _TRIM.value:
    cpu.release_free_memory()
  out["rss_before_steps_gib"] = round(_rss_gib("VmRSS"), 2)
  reset = _reset_peak_rss()
  # Warm up once, then time each phase from the same state (steps are pure).
  jax.block_until_ready(compiled["arch"](state, bt, bv))
  jax.block_until_ready(compiled["weight"](state, bt))
  out["arch_step_s"], arch_all = _median_time(lambda: compiled["arch"](state, bt, bv), steps)
  out["weight_step_s"], weight_all = _median_time(lambda: compiled["weight"](state, bt), steps)
  out["search_step_s"] = out["arch_step_s"] + out["weight_step_s"]
  if split:  # the wait before stepping: the first calls less one (median) run of each
    out["compile_wall_s"] = round(out["arch_first_call_s"] + out["weight_first_call_s"]
                                  - out["search_step_s"], 1)
  out["images_per_s"] = round(s.batch_size / out["search_step_s"], 2)
  # Host time: each phase's call until it returns (dispatched; the device works on), and
  # the jit boundary alone, with the state as a tree and as the loop's flat list.
  out["arch_dispatch_ms"] = _dispatch_ms(lambda: compiled["arch"](state, bt, bv))
  out["weight_dispatch_ms"] = _dispatch_ms(lambda: compiled["weight"](state, bt))
  out.update(host_boundary_ms(state, bt, bv))
  out["arch_times"] = [round(t, 3) for t in arch_all]
  out["weight_times"] = [round(t, 3) for t in weight_all]
  # With the reset: peak while stepping; otherwise the whole run's peak.
  out["peak_rss_steps_gib" if reset else "peak_rss_gib"] = round(_rss_gib(), 2)
  return out


def main(argv):
  del argv
  devices = sorted(int(d) for d in _DEVICES.value)
  if devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Host devices for a CPU-only machine; ignored by GPU/TPU backends.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(devices)}")
  utils.configure_xla()
  cli.enable_compilation_cache(os.environ.get("DNAS_JAX_CACHE", ""))
  image = tuple(int(v) for v in _IMAGE.value.split(","))
  for dtype in _DTYPES.value or [_CONFIG.value.get("dtype", "float32")]:
    for order in _ORDERS.value:
      base = None
      for n in devices or [0]:
        out = bench(_CONFIG.value, order, _STEPS.value, image, _CLASSES.value, dtype, n)
        if devices:
          base = base or (n, out["search_step_s"])  # the smallest count, normally 1
          out["speedup"] = round(base[1] / out["search_step_s"], 3)
          out["scaling_efficiency"] = round(base[0] * base[1] / (n * out["search_step_s"]), 3)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
