"""Latency tables: per-part latencies measured on one device kind, batch size and dtype.

A table is JSON (README.md, "Latency tables"):

  {"format": "dnas-latency-table/1",
   "meta": {"backend": "cpu", "device_kind": "cpu", "batch_size": 64, "dtype": "float32",
            "jax_version": "0.10.2", "date": "2026-11-24", "unit": "ms",
            "dispatch_ms": 0.011, "repeats": 50, "network": "cifar", "image": [8, 8, 1]},
   "entries": {"sep_conv_3x3|8x8x16->16|s1": {"median": 0.212, "q25": 0.207, "q75": 0.220},
               ...}}

Keys are `op_key`s, `part|HxWxC_in->C_out|sSTRIDE`, with the part's input shape (batch
from the meta); `median` is what predictions use. `dispatch_ms` is the cost of calling
any compiled function (measured on an identity), paid once per network, not once per
part. A calibrated table also has `meta.correction` = {"scale", "offset_ms", ...}:
predictions are scale * (sum of parts) + offset (`LatencyTable.part_ms`,
`LatencyTable.network_ms`).
"""

import dataclasses
import datetime
import json
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import layers
from dnas.deploy import runtimes
from dnas.deploy.inference import inference_fn

FORMAT = "dnas-latency-table/1"
META_KEYS = ("backend", "device_kind", "batch_size", "dtype", "unit", "dispatch_ms")


class LatencyError(ValueError):
  """A latency table or latency setting that cannot be used; the message says why."""


def op_key(name: str, in_shape, c_out: int, stride: int = 1) -> str:
  """The one key format of every table entry: part `name` on input f[N, *in_shape]
  (H, W, C for images; any rank) giving `c_out` channels with `stride`."""
  return f"{name}|{'x'.join(map(str, in_shape))}->{c_out}|s{stride}"


def cpu_model() -> str:
  """The processor's model name (/proc/cpuinfo; `platform.processor()` elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_stamp() -> dict:
  """What a table measured here is stamped with (and checked against). XLA calls every
  CPU "cpu": a CPU table also names the processor model and the cores JAX may use."""
  d = jax.devices()[0]
  stamp = dict(backend=jax.default_backend(), device_kind=d.device_kind,
               jax_version=jax.__version__, date=datetime.date.today().isoformat())
  if stamp["backend"] == "cpu":
    stamp.update(cpu_model=cpu_model(), cpu_count=os.cpu_count())
  return stamp


def runtime_of(meta: dict) -> str:
  """The runtime a table was measured in (tables before runtimes were recorded: jax)."""
  return meta.get("runtime", "jax")


def _device(meta: dict) -> tuple:
  """The identity two tables must share: backend and kind, and on CPU model and cores."""
  cpu = meta.get("backend") == "cpu"
  return (meta.get("backend"), meta.get("device_kind"),
          meta.get("cpu_model") if cpu else None, meta.get("cpu_count") if cpu else None)


def _describe(meta: dict) -> str:
  where = f"{meta.get('backend')} {meta.get('device_kind')!r}"
  if meta.get("backend") != "cpu":
    return where
  if meta.get("cpu_model") is None:
    return f"{where} without a processor stamp (a table made before dnas stamped CPU tables)"
  return f"{where}, processor {meta['cpu_model']!r} with {meta.get('cpu_count')} cores"


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

  @property
  def correction(self) -> tuple[float, float]:
    """(scale, offset_ms) of a calibrated table; (1, 0) otherwise."""
    c = self.meta.get("correction", {})
    return float(c.get("scale", 1.0)), float(c.get("offset_ms", 0.0))

  def part_ms(self, key: str) -> float:
    """A part inside a network: its entry less the call overhead that the whole network
    pays once, times the fitted scale (1 without a correction)."""
    return self.correction[0] * max(self.lookup(key) - self.dispatch_ms, 0.0)

  def network_ms(self, parts_ms: float) -> float:
    """A whole network whose parts (`part_ms`) sum to `parts_ms`: plus one dispatch
    (scaled) and the fitted offset."""
    scale, offset = self.correction
    return offset + scale * self.dispatch_ms + parts_ms

  def without_correction(self) -> "LatencyTable":
    return LatencyTable({k: v for k, v in self.meta.items() if k != "correction"},
                        self.entries)

  def calibrated(self, sums_ms, measured_ms, **about) -> "LatencyTable":
    """The table with a fitted correction, measured ~ scale * sum + offset, by least
    squares over other networks' uncorrected predictions `sums_ms` (from
    `without_correction()`) and their end-to-end times `measured_ms`. Whole compiled
    networks run faster than the sum of their separately timed parts (XLA fuses across
    part boundaries and runs independent kernels side by side; on this 2-core CPU about
    2x). One scale and one offset keep the table's ranking, which the raw sums already
    get right, and extrapolate to networks unlike the calibration set; a scale per kind
    of op overfitted the timing noise (BUILD_NOTES.md). The model stays linear in the
    part latencies, so the expected latency stays differentiable. `about`: recorded in
    the correction (e.g. the network it was fitted on)."""
    x, y = np.asarray(sums_ms, np.float64), np.asarray(measured_ms, np.float64)
    (scale, offset), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    if scale <= 0:
      raise LatencyError(f"calibration found no positive relation between the table's sums "
                         f"and {len(y)} measured networks")
    fit = scale * x + offset
    correction = dict(scale=round(float(scale), 6), offset_ms=round(float(offset), 6),
                      networks=len(y),
                      fit_mape_pct=round(float(100 * np.mean(np.abs(fit - y) / y)), 3), **about)
    return LatencyTable(dict(self.without_correction().meta, correction=correction),
                        self.entries)

  def check(self, *, batch_size: int | None = None, dtype: str | None = None,
            allow_foreign: bool = False) -> None:
    """Refuses a table from another device kind, or on CPU another processor model or core
    count (unless `allow_foreign`), or from another batch size or dtype than asked for.
    Any runtime's table measured here is this device's: a search optimises what it
    measured (`meta.runtime`)."""
    here = device_stamp()
    if not allow_foreign and _device(self.meta) != _device(here):
      raise LatencyError(
          f"the latency table was measured on {_describe(self.meta)}, this is "
          f"{_describe(here)}; profile here or pass allow_foreign_table=True (a table for "
          f"a remote target)")
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
    # A fitted model's table (`meta.model`, e.g. NAS-Bench-201's cell model) holds
    # coefficients, interaction terms of either sign; measured parts are >= 0.
    fitted = "model" in meta
    for key, e in entries.items():
      v = e.get("median") if isinstance(e, dict) else None
      if (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)
          or not (fitted or v >= 0)):
        raise LatencyError(f"latency table entry {key!r} needs a 'median' "
                           f"{'(finite)' if fitted else '>= 0'} (ms), got {v!r}")
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


def dispatch_ms(shape, dtype, repeats: int = 200, runtime: str = "jax") -> float:
  """Median cost of calling a compiled function that does almost nothing on an input of
  `shape` (any rank) in `runtime`: what each standalone op measurement pays once and a
  whole network once."""
  def tiny(x):
    return x[(slice(0, 1),) * x.ndim] + 1
  if runtime == "jax":
    return time_call(jax.jit(tiny), jnp.zeros(shape, dtype), repeats=repeats,
                     warmup=20)["median"]
  call = runtimes.compile_fn(runtime, tiny, shape, np.dtype(dtype)).call
  return time_call(call, np.zeros(shape, dtype), repeats=repeats, warmup=20)["median"]


def _compile_file(runtime: str, module: nnx.Module, shape, dtype, apply=None):
  """`module` in eval mode (a copy) as a file of `runtime` (`dnas.deploy`), compiled for
  dtype[shape] inputs: a `runtimes.Compiled`."""
  module = nnx.clone(module)
  module.eval()
  return runtimes.compile_fn(runtime, inference_fn(module, apply=apply), shape,
                             np.dtype(dtype))


def module_timer(runtime: str, module: nnx.Module, example,
                 save: str | None = None) -> Callable[..., dict]:
  """timer(repeats) -> `time_call`'s dict: `module` in eval mode compiled in `runtime`
  for inputs like `example` (f[N, ...]), timed on seeded random inputs. In JAX the
  variables are an argument (as `jit_eval`); elsewhere they are inside the file, which
  `save` (a path) keeps."""
  x = np.random.default_rng(0).standard_normal(example.shape).astype(example.dtype)
  if runtime == "jax":
    fn, state = jit_eval(module)
    return lambda repeats: time_call(fn, state, jnp.asarray(x), repeats=repeats)
  compiled = _compile_file(runtime, module, example.shape, example.dtype)
  if save:
    with open(save, "wb") as f:
      f.write(compiled.file_bytes())
  return lambda repeats: time_call(compiled.call, x, repeats=repeats)


def compile_eval(module: nnx.Module, image_shape, *, batch_size: int, dtype: str, seed: int = 0,
                 runtime: str = "jax", apply=None):
  """(compiled f(*args), args): `module` in eval mode compiled for f32[batch_size,
  *image_shape] inputs of `dtype`, and seeded random inputs: what a space's
  `compile_final` returns. In JAX f(state, x); in another runtime (`dnas.deploy`) f(x),
  the variables inside the file, the output the logits (`apply`: the space's
  `final_apply`)."""
  jdtype = jnp.dtype(dtype)
  x = np.random.default_rng(seed).standard_normal((batch_size,) + tuple(image_shape))
  if runtime != "jax":
    compiled = _compile_file(runtime, module, x.shape, dtype, apply)
    return compiled.call, (x.astype(dtype),)
  forward, state = jit_eval(module, jdtype)
  x = jnp.asarray(x, jdtype)
  return forward.lower(state, x).compile(), (state, x)


def jit_eval(module: nnx.Module, dtype=None):
  """(jitted f(state, *xs), state): a copy of `module` in eval mode, as timed, with its
  floating-point variables cast to `dtype` (None: kept). Stacks of identical layers are
  traced as a loop (`dnas.layers.unrolled`), as every latency table was measured."""
  module = nnx.clone(module)
  module.eval()
  graphdef, state = nnx.split(module)
  if dtype is not None:
    state = jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating)
                         else v, state)
  return jax.jit(layers.unrolled_fn(lambda state, *xs: nnx.merge(graphdef, state)(*xs))), state
