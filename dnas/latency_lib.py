"""Measured latency: lookup tables of per-op latencies on a target device, and the
latency-aware search objectives of FBNet (Wu et al., CVPR 2019) and ProxylessNAS (Cai
et al., ICLR 2019).

A table is JSON (README.md, "Latency tables"):

  {"format": "dnas-latency-table/1",
   "meta": {"backend": "cpu", "device_kind": "cpu", "batch_size": 64, "dtype": "float32",
            "jax_version": "0.10.2", "date": "2026-11-24", "unit": "ms",
            "dispatch_ms": 0.011, "repeats": 50, "network": "cifar", "image": [8, 8, 1]},
   "entries": {"sep_conv_3x3|8x8x16->16|s1": {"median": 0.212, "q25": 0.207, "q75": 0.220},
               ...}}

Keys are `op|HxWxC_in->C_out|sSTRIDE` with the op's input shape (batch from the meta);
`median` is what predictions use. `dispatch_ms` is the cost of calling any compiled
function (measured on an identity), paid once per network, not once per op. A calibrated
table also has `meta.correction` = {"scale", "offset_ms", ...}: predictions are
scale * (sum of parts) + offset (`dnas.spaces.darts.latency.calibrate`).
"""

import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import arch

FORMAT = "dnas-latency-table/1"
META_KEYS = ("backend", "device_kind", "batch_size", "dtype", "unit", "dispatch_ms")
OBJECTIVES = ("none", "fbnet", "proxyless", "target")


class LatencyError(ValueError):
  """A latency table or latency setting that cannot be used; the message says why."""


def op_key(name: str, h: int, w: int, c_in: int, c_out: int, stride: int) -> str:
  """Table key of op `name` on input f[N, h, w, c_in] giving c_out channels."""
  return f"{name}|{h}x{w}x{c_in}->{c_out}|s{stride}"


def device_stamp() -> dict:
  """What a table measured here is stamped with (and checked against)."""
  d = jax.devices()[0]
  return dict(backend=jax.default_backend(), device_kind=d.device_kind,
              jax_version=jax.__version__, date=datetime.date.today().isoformat())


@dataclasses.dataclass(frozen=True)
class LatencyTable:
  """Per-op latencies (milliseconds) for one device kind, batch size and dtype."""
  meta: dict
  entries: dict

  def lookup(self, key: str) -> float:
    """Median latency (ms) of `key`; a missing key is a LatencyError naming it."""
    try:
      return float(self.entries[key]["median"])
    except KeyError:
      where = " ".join(str(self.meta[k]) for k in ("network", "image") if k in self.meta)
      raise LatencyError(
          f"the latency table has no entry {key!r} (it holds {len(self.entries)} entries "
          f"for {where or 'another network'}, batch {self.meta['batch_size']}); profile this "
          f"config: python -m dnas.latency profile --config=...") from None

  @property
  def dispatch_ms(self) -> float:
    return float(self.meta["dispatch_ms"])

  def check(self, *, batch_size: int | None = None, dtype: str | None = None,
            allow_foreign: bool = False) -> None:
    """Refuses a table from another device kind (unless `allow_foreign`), batch size or
    dtype than the ones asked for."""
    here = device_stamp()
    if not allow_foreign and (self.meta["backend"], self.meta["device_kind"]) != (
        here["backend"], here["device_kind"]):
      raise LatencyError(
          f"the latency table was measured on {self.meta['backend']} "
          f"{self.meta['device_kind']!r}, this is {here['backend']} {here['device_kind']!r}; "
          f"profile here or pass allow_foreign_table=True (a table for a remote target)")
    for name, want in (("batch_size", batch_size), ("dtype", dtype)):
      if want is not None and self.meta[name] != want:
        raise LatencyError(f"the latency table was measured with {name} {self.meta[name]!r}, "
                           f"the config asks for {want!r}")

  def to_dict(self) -> dict:
    return {"format": FORMAT, "meta": self.meta, "entries": self.entries}

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=1, sort_keys=True)
      f.write("\n")

  @classmethod
  def from_dict(cls, d) -> "LatencyTable":
    if not isinstance(d, dict) or d.get("format") != FORMAT:
      raise LatencyError(f"not a latency table: 'format' must be {FORMAT!r}")
    meta, entries = d.get("meta"), d.get("entries")
    if not isinstance(meta, dict) or not isinstance(entries, dict):
      raise LatencyError("a latency table needs 'meta' and 'entries' objects")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
      raise LatencyError(f"latency table meta lacks {', '.join(missing)}")
    if meta["unit"] != "ms":
      raise LatencyError(f"latency table unit must be 'ms', got {meta['unit']!r}")
    for key, e in entries.items():
      v = e.get("median") if isinstance(e, dict) else None
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise LatencyError(f"latency table entry {key!r} needs a 'median' >= 0 (ms), got {v!r}")
    return cls(meta, entries)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "LatencyTable":
    try:
      with open(path) as f:
        d = json.load(f)
    except OSError as e:
      raise LatencyError(f"cannot read latency table {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
      raise LatencyError(f"latency table {path} is not JSON: {e.msg} (line {e.lineno})") from None
    try:
      return cls.from_dict(d)
    except LatencyError as e:
      raise LatencyError(f"{path}: {e}") from None


def time_call(fn: Callable, *args, repeats: int = 50, warmup: int = 5) -> dict:
  """Wall time of `fn(*args)` (compiled, outputs blocked on): warm-up calls, then the
  median and quartiles of `repeats` calls, in ms."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t) * 1e3)
  q25, med, q75 = np.percentile(times, [25, 50, 75])
  return dict(median=round(float(med), 5), q25=round(float(q25), 5), q75=round(float(q75), 5))


def dispatch_ms(shape, dtype, repeats: int = 200) -> float:
  """Median cost of calling a compiled function that does almost nothing on an input of
  `shape` (any rank): what each standalone op measurement pays once and a whole network
  once."""
  x = jnp.zeros(shape, dtype)
  fn = jax.jit(lambda x: x[(slice(0, 1),) * x.ndim] + 1)
  return time_call(fn, x, repeats=repeats, warmup=20)["median"]


def make_objective(form: str, *, weight: float = 0.0, fbnet_alpha: float = 0.2,
                   fbnet_beta: float = 0.6, target_ms: float = 0.0) -> Callable | None:
  """objective(ce, lat) -> loss of the architecture step, f32[] x f32[] -> f32[]; None
  for "none". `lat` is the expected latency in ms.

    fbnet      ce * a * log(lat)^b            FBNet Eq. 2 (a = fbnet_alpha, b = fbnet_beta)
    proxyless  ce + weight * lat              ProxylessNAS Sec. 3.3 (lambda_2 E[LAT])
    target     ce + weight * max(0, lat / target_ms - 1)   only latency above a budget
  """
  if form not in OBJECTIVES:
    raise LatencyError(f"latency.objective {form!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  if form == "none":
    return None
  if form == "fbnet":
    # log(lat) must stay positive: lat > 1 ms (checked against the table's lower bound by
    # the caller); the floor only guards against a NaN.
    return lambda ce, lat: ce * fbnet_alpha * jnp.log(jnp.maximum(lat, 1.0 + 1e-6)) ** fbnet_beta
  if form == "proxyless":
    return lambda ce, lat: ce + weight * lat
  return lambda ce, lat: ce + weight * jax.nn.relu(lat / target_ms - 1.0)


def validate_settings(form: str, weight: float, fbnet_alpha: float, fbnet_beta: float,
                      target_ms: float, min_latency_ms: float | None = None) -> None:
  """One LatencyError line for settings that cannot work."""
  if form not in OBJECTIVES:
    raise LatencyError(f"latency.objective {form!r} is unknown; valid: {', '.join(OBJECTIVES)}")
  for name, v in (("latency.weight", weight), ("latency.fbnet_alpha", fbnet_alpha),
                  ("latency.fbnet_beta", fbnet_beta), ("latency.target_ms", target_ms)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      raise LatencyError(f"{name} must be a number >= 0, got {v!r}")
  if form in ("proxyless", "target") and weight <= 0:
    raise LatencyError(f"latency.weight must be > 0 for latency.objective={form}, got {weight}")
  if form == "target" and target_ms <= 0:
    raise LatencyError(f"latency.target_ms must be > 0 for latency.objective=target, got "
                       f"{target_ms}")
  if form == "fbnet" and (fbnet_alpha <= 0 or fbnet_beta <= 0):
    raise LatencyError("latency.fbnet_alpha and latency.fbnet_beta must be > 0 for "
                       "latency.objective=fbnet")
  if form == "fbnet" and min_latency_ms is not None and min_latency_ms <= 1.0:
    raise LatencyError(f"latency.objective=fbnet needs log(latency in ms) > 0, but the fastest "
                       f"network of this table takes {min_latency_ms:.3f} ms; use a larger "
                       f"latency.batch_size or latency.objective=proxyless")


def arch_objective(objective: Callable, expected_ms: Callable) -> Callable:
  """The architecture step's objective for `bilevel.make_search_step(arch_objective=...)`:
  (ce, alphas) -> (objective(ce, lat), {"a_latency_ms": lat}), lat = expected_ms(alphas)
  (alphas: the search state's `ArchParam` state)."""
  def fn(ce, alphas):
    lat = expected_ms(alphas)
    return objective(ce, lat), {"a_latency_ms": lat}
  return fn


# Latency of any model built with `dnas.MixedOp` (no DARTS-specific code): each candidate op
# timed alone at the input shape its MixedOp sees, and the rest of the network.

def mixed_op_key(path: str, k: int, shape) -> str:
  """Table key of candidate k of the MixedOp at `path` on input f[N, *shape[1:]]."""
  return f"mixed:{path}|{k}|{'x'.join(map(str, shape[1:]))}"


def rest_key(shape) -> str:
  """Table key of the network outside its MixedOps, on input f[N, *shape[1:]]."""
  return f"rest|{'x'.join(map(str, shape[1:]))}"


def jit_eval(module: nnx.Module, dtype=None):
  """(jitted f(state, *xs), state): a copy of `module` in eval mode, as timed, with its
  floating-point variables cast to `dtype` (None: kept)."""
  module = nnx.clone(module)
  module.eval()
  graphdef, state = nnx.split(module)
  if dtype is not None:
    state = jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating)
                         else v, state)
  return jax.jit(lambda state, *xs: nnx.merge(graphdef, state)(*xs)), state


def _checked_inputs(model, example):
  """(input shapes, MixedOps) by path; a LatencyError for what the expected latency
  cannot describe."""
  ops = arch.mixed_ops(model)
  if not ops:
    raise LatencyError("the model has no MixedOp with its own alpha to profile")
  nested = [p for p in ops if any(p.startswith(q + "/") for q in ops)]
  if nested:
    raise LatencyError(f"MixedOp {nested[0]} is nested inside another MixedOp; the expected "
                       f"latency sums independent MixedOps only")
  inputs = arch.mixed_op_inputs(model, example)
  missing = sorted(set(ops) - set(inputs))
  if missing:
    raise LatencyError(f"MixedOp {missing[0]} was not called on the model's own instance "
                       f"(inside nnx.remat, scan, vmap or a switch?); its input shape is unknown")
  return inputs, ops


def profile_mixed_ops(model: nnx.Module, example: jax.Array, *, repeats: int = 50,
                      progress: Callable | None = None) -> LatencyTable:
  """Measures a latency table of `model` (eval mode) on inputs like `example`
  (f32[N, ...]; N is the table's batch): each candidate op of each MixedOp compiled
  alone and timed at its input shape, and the rest of the network, timed as the whole
  network with every MixedOp at its current choice minus those choices' ops (floored at
  0). `progress(i, n, key, ms)` is called per entry."""
  inputs, ops = _checked_inputs(model, example)
  dispatch = dispatch_ms(example.shape, example.dtype)
  entries, n = {}, sum(len(ops[p].ops) for p in inputs) + 1
  rng = np.random.default_rng(0)
  for path, shape in inputs.items():
    x = jnp.asarray(rng.standard_normal(shape.shape), shape.dtype)
    for k, op in enumerate(ops[path].ops):
      fn, state = jit_eval(op)
      key = mixed_op_key(path, k, shape.shape)
      entries[key] = time_call(fn, state, x, repeats=repeats)
      if progress:
        progress(len(entries), n, key, entries[key]["median"])
  fn, state = jit_eval(arch.discretize(model))
  whole = time_call(fn, state, example, repeats=repeats)["median"]
  chosen = sum(max(entries[mixed_op_key(p, ops[p].choice(), s.shape)]["median"] - dispatch, 0.0)
               for p, s in inputs.items())
  entries[rest_key(example.shape)] = dict(median=round(max(whole - chosen, dispatch), 5),
                                          whole_ms=whole)
  if progress:
    progress(n, n, rest_key(example.shape), entries[rest_key(example.shape)]["median"])
  meta = dict(device_stamp(), batch_size=int(example.shape[0]), dtype=str(example.dtype),
              unit="ms", dispatch_ms=dispatch, repeats=repeats, network=type(model).__name__,
              image=list(example.shape[1:]))
  return LatencyTable(meta, entries)


@dataclasses.dataclass(frozen=True)
class MixedOpLatency:
  """Expected latency of a model with MixedOps, differentiable in its alphas (FBNet Eq. 4,
  ProxylessNAS Eq. 3): E[LAT] = rest + sum over MixedOps of softmax(alpha) . lat.

  Build with `MixedOpLatency.build(table, model, example)`; call on the search state's
  alphas (`ArchParam` state) inside the jitted step."""
  rest_ms: float
  ops_ms: dict  # path -> f32[K] latency of each candidate (ms, dispatch excluded)

  @classmethod
  def build(cls, table: LatencyTable, model: nnx.Module, example) -> "MixedOpLatency":
    inputs, ops = _checked_inputs(model, example)
    d = table.dispatch_ms
    ops_ms = {p: np.array([max(table.lookup(mixed_op_key(p, k, s.shape)) - d, 0.0)
                           for k in range(len(ops[p].ops))], np.float32)
              for p, s in inputs.items()}
    return cls(table.lookup(rest_key(example.shape)), ops_ms)

  def __call__(self, alphas) -> jax.Array:
    flat = {arch.path_str(path[:-1]): v for path, v in nnx.to_flat_state(alphas)
            if path[-1] == "alpha"}
    total = jnp.asarray(self.rest_ms, jnp.float32)
    for path, lat in self.ops_ms.items():
      a = flat[path]
      a = a.get_value() if hasattr(a, "get_value") else a
      total = total + jnp.dot(jax.nn.softmax(a.astype(jnp.float32)), lat)
    return total

  def predict(self, picks: dict[str, int]) -> float:
    """Latency (ms) of the discrete network with these choices (`arch.choices`)."""
    return float(self.rest_ms + sum(self.ops_ms[p][k] for p, k in picks.items()))

  def minimum(self) -> float:
    return float(self.rest_ms + sum(lat.min() for lat in self.ops_ms.values()))
