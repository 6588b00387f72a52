"""The search loop's steps as `search_lib` builds them: compiled once, never run eagerly,
and what is compiled ahead counted where it belongs.

Split steps (the second-order default on CPU) left unjitted run op by op in Python, 23 s a
NAS-Bench-201 digits step, with right values, so no value test notices them.
Here the supernet's Python code must not run again once a step has compiled: a compiled
step does not trace, an eager one runs the network's code at every call.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import bilevel, cpu, execution, hypergrad, methods, parallel, search_lib
from dnas.configs import tiny
from dnas.spaces import darts
from dnas.spaces.darts import search as darts_search


@pytest.mark.parametrize("order,programs", [("first", "split"), ("second_fd", "auto")])
def test_split_steps_compile_once_and_never_run_eagerly(monkeypatch, order, programs):
  calls = []
  original = darts_search.Network.__call__

  def counted(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)
  monkeypatch.setattr(darts_search.Network, "__call__", counted)
  net = darts.Network(2, 3, 2, steps=1, multiplier=1, stem_multiplier=1, in_channels=1,
                      primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                      rngs=nnx.Rngs(0))
  w_tx, a_tx = bilevel.make_w_tx(0.1), bilevel.make_a_tx(lr=0.01)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  mesh = parallel.make_mesh(1)
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  execution = bilevel.Execution(programs=programs, shardings=shardings)
  assert execution.split(order)  # the path under test
  config = tiny.get_config()
  flat, search_step, warmup_step = search_lib.compiled_steps(
      graphdef, state, w_tx, a_tx, order=order,
      hypergrad=hypergrad.from_order(order, bilevel.make_w_tx(0.1, grad_clip=None)),
      arch_loss=None, parts=methods.build(config, steps_per_epoch=2), execution=execution)
  rng = np.random.default_rng(0)

  def batch():
    return parallel.put_batch(dict(image=rng.standard_normal((4, 6, 6, 1)).astype(np.float32),
                                   label=rng.integers(0, 3, 4).astype(np.int32)), mesh)
  leaves = flat.leaves(state)
  for step in (search_step, warmup_step):  # each compiled on its first call (or before)
    leaves, metrics = step(leaves, batch(), batch())
  assert calls, "the steps never traced the network"
  del calls[:]
  for _ in range(2):
    for step in (search_step, warmup_step):
      leaves, metrics = step(leaves, batch(), batch())
      assert np.isfinite(float(metrics["w_loss"]))
  assert not calls, f"{len(calls)} network calls in four compiled steps: they run eagerly"


def test_programs_compiled_ahead_count_where_they_belong():
  # A compile-ahead thread started inside a watch (a step's programs) counts in it; one
  # started outside (the evaluation beside the step) reports its own watch, not the step's.
  def program(k):
    return cpu.compile_then_trim(jax.jit(lambda x: jnp.sin(x) * k))
  spec = (jax.ShapeDtypeStruct((3,), jnp.float32),)
  reports, x = [], jnp.ones(3)
  with execution.CompileWatch() as step:
    execution.precompile_in_background([(program(2.0), spec)], report=reports.append).join()
    jax.jit(lambda x: x + 1)(x)
  assert step.programs == 2 and len(reports) == 1 and reports[0].programs == 1
  go = threading.Event()

  class AfterGo:  # compiles only once the step's watch below is active
    def precompile(self, *args):
      go.wait()
      program(3.0).precompile(*args)
  outside = execution.precompile_in_background(
      [(AfterGo(), spec), (jax.jit(lambda x: x * 4), spec)], report=reports.append)
  with execution.CompileWatch() as step:
    go.set()
    outside.join()
    jax.jit(lambda x: x - 1)(x)
  assert step.programs == 1 and reports[1].programs == 2
  # A run that stops compiles nothing more: `after` is asked before each program.
  asked = []
  execution.precompile_in_background(
      [(program(5.0), spec), (program(6.0), spec)], report=reports.append,
      after=lambda: asked.append(1) or len(asked) == 1).join()
  assert len(asked) == 2 and reports[2].programs == 1
  # The watch says when its trace is done (XLA's compile begins).
  compiling = threading.Event()
  with execution.CompileWatch(compiling=compiling):
    assert not compiling.is_set()
    jax.jit(lambda x: x * 7)(x)
    assert compiling.is_set()
  compiling.clear()  # with the persistent cache: its lookup, after every lowering
  with execution.CompileWatch(compiling=compiling):
    # A helper's program compiled ahead (it counts here) does not end this trace.
    execution.precompile_in_background([(program(7.0), spec)]).join()
    assert not compiling.is_set()
    jax.monitoring.record_event("/jax/compilation_cache/compile_requests_use_cache")
    assert compiling.is_set()
