"""Latency of any model built with `dnas.MixedOp` (the generic space; no DARTS code):
each candidate op timed alone at the input shape its MixedOp meets in the traced model,
and the rest of the network."""

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import arch
from dnas.deploy import runtimes
from dnas.latency import trace
from dnas.latency.expected import ExpectedLatency
from dnas.latency.table import (LatencyError, LatencyTable, device_stamp, dispatch_ms,
                                module_timer, op_key)


def _stride(x, y) -> int:
  return x.shape[1] // y.shape[1] if len(x.shape) == len(y.shape) == 4 else 1


def candidate_key(path: str, k: int, x, y) -> str:
  """Key of candidate k of the MixedOp at `path` with input `x` and output `y` shapes."""
  return op_key(f"{path}/{k}", x.shape[1:], y.shape[-1], _stride(x, y))


def rest_key(x, y) -> str:
  """Key of the network outside its MixedOps, on input `x`, with output `y` shapes."""
  return op_key("rest", x.shape[1:], y.shape[-1])


def mixed_op_shapes(model: nnx.Module, example):
  """({path: (input, output) shapes} of each MixedOp that owns its alpha, the model's
  output shape, the MixedOps by path); a LatencyError for what the expected latency
  cannot describe."""
  ops = arch.mixed_ops(model)
  if not ops:
    raise LatencyError("the model has no MixedOp with its own alpha to profile")
  nested = [p for p in ops if any(p.startswith(q + "/") for q in ops)]
  if nested:
    raise LatencyError(f"MixedOp {nested[0]} is nested inside another MixedOp; the expected "
                       f"latency sums independent MixedOps only")
  found, out = trace.calls(model, example, types=(arch.MixedOp,))
  shapes = {}
  for c in found:
    if c.path in ops:
      shapes.setdefault(c.path, (c.inputs[0], c.output))
  missing = sorted(set(ops) - set(shapes))
  if missing:
    raise LatencyError(f"MixedOp {missing[0]} was not called on the model's own instance "
                       f"(inside nnx.remat, scan, vmap or a switch?); its input shape is unknown")
  out = out[0] if isinstance(out, tuple) else out
  return shapes, out, ops


def profile(model: nnx.Module, example: jax.Array, *, repeats: int = 50,
            progress: Callable | None = None, runtime: str = "jax",
            models_dir: str | None = None) -> LatencyTable:
  """Measures a latency table of `model` (eval mode) on inputs like `example`
  (f32[N, ...]; N is the table's batch) in `runtime` (`dnas.deploy.RUNTIMES`): each
  candidate op of each MixedOp compiled alone and timed at its input shape, and the rest
  of the network, timed as the whole network with every MixedOp at its current choice
  minus those choices' ops (floored at one dispatch). `progress(i, n, key, ms)` is
  called per entry. `models_dir` (a runtime with files: onnxruntime, litert): each timed
  model is also written there, with manifest.json naming the file of each key, to time
  them on a device with the runtime's own benchmark tool (docs/latency.md)."""
  shapes, out, ops = mixed_op_shapes(model, example)
  dispatch = dispatch_ms(example.shape, example.dtype, runtime=runtime)
  entries, n = {}, sum(len(ops[p].ops) for p in shapes) + 1
  files = {}

  def save(name):
    if not models_dir:
      return None
    os.makedirs(models_dir, exist_ok=True)
    files[name] = f"{len(files):03d}{runtimes.SUFFIX[runtime]}"
    return os.path.join(models_dir, files[name])

  for path, (x, y) in shapes.items():
    for k, op in enumerate(ops[path].ops):
      key = candidate_key(path, k, x, y)
      entries[key] = module_timer(runtime, op, x, save(key))(repeats)
      if progress:
        progress(len(entries), n, key, entries[key]["median"])
  whole = module_timer(runtime, arch.discretize(model), example,
                       save("whole"))(repeats)["median"]
  chosen_keys = [candidate_key(p, ops[p].choice(), x, y) for p, (x, y) in shapes.items()]
  chosen = sum(max(entries[k]["median"] - dispatch, 0.0) for k in chosen_keys)
  rest = rest_key(example, out)
  entries[rest] = dict(median=round(max(whole - chosen, dispatch), 5), whole_ms=whole)
  if progress:
    progress(n, n, rest, entries[rest]["median"])
  meta = dict(device_stamp(), **runtimes.stamp(runtime), batch_size=int(example.shape[0]),
              dtype=str(example.dtype),
              unit="ms", dispatch_ms=dispatch, repeats=repeats, network=type(model).__name__,
              image=list(example.shape[1:]))
  if models_dir:
    # rest = whole - sum over `whole_minus` of max(entry - dispatch, 0), floored at dispatch.
    with open(os.path.join(models_dir, "manifest.json"), "w") as f:
      json.dump(dict(meta=meta, files=files, rest=rest, whole_minus=chosen_keys), f, indent=1)
  return LatencyTable(meta, entries)


def expected_latency(table: LatencyTable, model: nnx.Module, example) -> ExpectedLatency:
  """E[LAT] = rest + sum over MixedOps of softmax(alpha) . LAT (one group per MixedOp, one
  row each); architectures are {path: op index} (`arch.choices`)."""
  shapes, out, ops = mixed_op_shapes(model, example)
  lat = {p: np.array([[table.part_ms(candidate_key(p, k, x, y))
                       for k in range(len(ops[p].ops))]])
         for p, (x, y) in shapes.items()}
  fixed = table.network_ms(table.part_ms(rest_key(example, out)))

  def weights(alphas):
    logits = {arch.path_str(path[:-1]): v for path, v in nnx.to_flat_state(alphas)
              if path[-1] == "alpha"}
    return {p: jax.nn.softmax(_value(logits[p]).astype(jnp.float32))[None] for p in lat}

  return ExpectedLatency(fixed, lat, weights, lambda picks: {p: [(0, k)] for p, k in picks.items()},
                         fixed + sum(float(v.min()) for v in lat.values()))


def _value(v):
  return v.get_value() if hasattr(v, "get_value") else v
