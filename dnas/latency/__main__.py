"""The latency CLI: tables for latency-aware search (FBNet, ProxylessNAS).

python -m dnas.latency profile [--config=dnas/configs/digits.py] [--out=latency_table.json]
                               [--runtime=jax|onnxruntime|litert]
    measures every candidate op and fixed part of the config's final network at each
    shape it meets (traced from the network) (`train.*`, `latency.batch_size`, `dtype`),
    here, in the runtime that will run the network: JAX on this backend, or ONNX Runtime
    or LiteRT on this CPU (each part converted as `dnas.export --format=onnx|tflite`
    converts the network; the MixedOp spaces: mobile, nb201, your own model).
python -m dnas.latency calibrate --table=latency_table.json [--networks=30] [--out=...]
    times `--networks` random final networks end to end here and fits the table's
    correction, measured ~ scale * (table sum) + offset (BUILD_NOTES.md), in the table's
    runtime (`meta.runtime`).
python -m dnas.latency predict --genotype=g.json --table=latency_table.json [--measure]
    the table's prediction for a genotype's final network, and with --measure the
    network timed end to end here in the table's runtime.

Use a table in a search with --config.latency.table=... and --config.latency.objective=...
"""

import inspect
import json

import numpy as np
from absl import flags

from dnas import cli, config as config_lib, spaces
from dnas.data.pipeline import dataset_info
from dnas.deploy import onnx as onnx_lib, runtimes
from dnas.latency import LatencyError, LatencyTable, time_call
from dnas.latency.table import runtime_of

_CONFIG = cli.define_config_flag()
_OUT = flags.DEFINE_string("out", "latency_table.json", "profile: where to write the table.")
_TABLE = flags.DEFINE_string("table", None, "predict: the latency table.")
_GENOTYPE = flags.DEFINE_string("genotype", None, "predict: the genotype JSON file.")
_MEASURE = flags.DEFINE_bool("measure", False, "predict: also time the network here.")
_RUNTIME = flags.DEFINE_string("runtime", "jax", "profile: the runtime to measure in: "
                               + " or ".join(runtimes.RUNTIMES) + ".")
_MODELS_DIR = flags.DEFINE_string("models_dir", None, "profile, a runtime with model files "
                                  "(onnxruntime, litert; MixedOp spaces): also write each timed "
                                  "model there, with manifest.json, to time on a device.")
_NETWORKS = flags.DEFINE_integer("networks", 30, "calibrate: random networks to time.")
_SEED = flags.DEFINE_integer("seed", 1000, "calibrate: seed of the random networks.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "calibrate: timing rounds over all networks.")
_ALLOW_FOREIGN = flags.DEFINE_bool("allow_foreign_table", False, "predict: accept a table "
                                   "measured on another device kind.")


def _info(config):
  return dataset_info(config.data.name, config.data.image_size, config.data.data_dir)


def profile(config):
  L, dtype = config.latency, config.dtype

  def report(i, n, key, ms):
    print(f"[{i}/{n}] {key}: {ms:.4f} ms", flush=True)
  space = spaces.get(config.space)
  if getattr(space, "latency_profile", None) is None:  # optional in the protocol
    raise LatencyError(f"space {config.space} cannot measure a latency table (its space "
                       f"has no latency_profile); give the search a table made elsewhere")
  runtime = runtimes.check(_RUNTIME.value)
  if _MODELS_DIR.value and (runtime == "jax" or "models_dir" not in
                            inspect.signature(space.latency_profile).parameters):
    raise LatencyError(f"--models_dir writes model files: it needs --runtime=onnxruntime or "
                       f"litert and a "
                       f"MixedOp space (mobile, your own model), not {runtime} in space "
                       f"{config.space}")
  table = space.latency_profile(
      config_lib.space_section(config), config.train, _info(config), batch_size=L.batch_size,
      dtype=dtype, repeats=L.repeats, seed=config.seed, progress=report, runtime=runtime,
      **({"models_dir": _MODELS_DIR.value} if _MODELS_DIR.value else {}))
  table.save(_OUT.value)
  print(f"wrote {_OUT.value}: {len(table.entries)} entries, {runtime} on "
        f"{table.meta.get('cpu_model', table.meta['device_kind'])}, batch {L.batch_size}, "
        f"{dtype}, dispatch {table.dispatch_ms:.4f} ms")


def calibrate(config):
  if not _TABLE.value:
    raise LatencyError("calibrate needs --table")
  table = LatencyTable.load(_TABLE.value)
  table.check()  # the networks are timed here: the table must be from this device kind
  space, info, model = spaces.get(config.space), _info(config), config_lib.space_section(config)
  rng = np.random.default_rng(_SEED.value)
  genotypes = [space.random_arch(rng, model, info) for _ in range(_NETWORKS.value)]
  runtime = runtimes.check(runtime_of(table.meta))
  compiled = [space.compile_final(g, model, config.train, info,
                                  batch_size=table.meta["batch_size"],
                                  dtype=table.meta["dtype"], runtime=runtime)
              for g in genotypes]
  # Rounds over all networks, interleaved; the median of each network's round medians.
  times = [[] for _ in genotypes]
  for _ in range(_ROUNDS.value):
    for i, (forward, args) in enumerate(compiled):
      times[i].append(time_call(forward, *args,
                                            repeats=table.meta.get("repeats", 50))["median"])
  measured = [float(np.median(t)) for t in times]
  raw = space.latency_model(table.without_correction(), model, config.train, info)
  sums = [raw.predict(g) for g in genotypes]
  for i, (ms, s) in enumerate(zip(measured, sums)):
    print(f"[{i + 1}/{len(measured)}] measured {ms:.4f} ms, table sum {s:.4f} ms", flush=True)
  final = {k: config.train[k] for k in ("network", "C", "layers", "N") if k in config.train}
  table = table.calibrated(sums, measured, space=space.name, image=list(info.image_shape),
                           **final)
  out = _OUT.value if _OUT.present else _TABLE.value
  table.save(out)
  print(f"wrote {out}: correction {json.dumps(table.meta['correction'])}")


def predict(config):
  if not _TABLE.value or not _GENOTYPE.value:
    raise LatencyError("predict needs --table and --genotype")
  table = LatencyTable.load(_TABLE.value)
  table.check(allow_foreign=_ALLOW_FOREIGN.value or not _MEASURE.value)
  space, info, model = spaces.get(config.space), _info(config), config_lib.space_section(config)
  genotype = spaces.load(space, _GENOTYPE.value)
  out = dict(predicted_ms=round(space.latency_model(table, model, config.train,
                                                    info).predict(genotype), 5))
  if _MEASURE.value:
    forward, args = space.compile_final(genotype, model, config.train, info,
                                        batch_size=table.meta["batch_size"],
                                        dtype=table.meta["dtype"],
                                        runtime=runtimes.check(runtime_of(table.meta)))
    measured = time_call(forward, *args)
    out.update(measured_ms=measured["median"], measured_q25=measured["q25"],
               measured_q75=measured["q75"], runtime=runtime_of(table.meta))
  print(json.dumps(out))


def main(argv):
  config_lib.validate(_CONFIG.value, "search")  # latency.*, model.* and data.* as a search
  {"profile": profile, "calibrate": calibrate, "predict": predict}[argv[1]](_CONFIG.value)


if __name__ == "__main__":
  cli.run(main, commands=("profile", "calibrate", "predict"),
          user_errors=(LatencyError, onnx_lib.ConversionError, runtimes.RuntimeError_))
