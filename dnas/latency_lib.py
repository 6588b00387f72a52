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
  `shape`: what each standalone op measurement pays once and a whole network once."""
  x = jnp.zeros(shape, dtype)
  fn = jax.jit(lambda x: x[:1, :1, :1, :1] + 1)
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
