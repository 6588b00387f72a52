"""Latency-aware search (FBNet, ProxylessNAS): tables of measured latencies, the
expected latency of any space's final network, the objectives, and the CLI
(`python -m dnas.latency`).

  table.py       LatencyTable (measure, load, refuse a foreign device, calibrate), op_key
  trace.py       the shapes a network meets, from tracing it
  expected.py    ExpectedLatency: E[LAT] over the slots of any space, differentiable
  objectives.py  FBNet's and ProxylessNAS's objectives
  mixed.py       the generic space's table and expected latency (any model with MixedOps)
  __main__.py    python -m dnas.latency profile|calibrate|predict

Each space describes its own slots (`dnas.spaces.darts.latency` for DARTS).
"""

from dnas.latency.expected import ExpectedLatency
from dnas.latency.objectives import (OBJECTIVES, arch_objective, make_objective,
                                     validate_settings)
from dnas.latency.table import (FORMAT, LatencyError, LatencyTable, compile_eval, cpu_model,
                                device_stamp, dispatch_ms, jit_eval, op_key, time_call)
from dnas.latency import mixed, trace  # noqa: E402  (after the names they import)
