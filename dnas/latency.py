"""Latency tables for latency-aware search (FBNet, ProxylessNAS).

python -m dnas.latency profile [--config=dnas/configs/digits.py] [--out=latency_table.json]
    measures every candidate op and fixed part of the config's final network at each
    shape it meets (`train.*`, `latency.batch_size`, `dtype`) on this JAX backend.
python -m dnas.latency predict --genotype=g.json --table=latency_table.json [--measure]
    the table's prediction for a genotype's final network, and with --measure the
    network timed end to end here.

Use a table in a search with --config.latency.table=... and --config.latency.objective=...
"""

import json

from absl import flags
from ml_collections import config_flags

from dnas import cli, latency_lib
from dnas.data.pipeline import dataset_info
from dnas.spaces import darts
from dnas.spaces.darts import latency as darts_latency

_CONFIG = config_flags.DEFINE_config_file("config", cli.DEFAULT_CONFIG, "Config file.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", "latency_table.json", "profile: where to write the table.")
_TABLE = flags.DEFINE_string("table", None, "predict: the latency table.")
_GENOTYPE = flags.DEFINE_string("genotype", None, "predict: the genotype JSON file.")
_MEASURE = flags.DEFINE_bool("measure", False, "predict: also time the network here.")
_ALLOW_FOREIGN = flags.DEFINE_bool("allow_foreign_table", False, "predict: accept a table "
                                   "measured on another device kind.")


def _layout(config):
  info = dataset_info(config.data.name, config.data.image_size)
  return darts_latency.layout_for(config, info)


def profile(config):
  layout = _layout(config)
  L, dtype = config.latency, config.get("dtype", "float32")

  def report(i, n, key, ms):
    print(f"[{i}/{n}] {key}: {ms:.4f} ms", flush=True)
  table = darts_latency.profile(layout, tuple(config.model.primitives), batch_size=L.batch_size,
                                dtype=dtype, repeats=L.repeats, progress=report)
  table.save(_OUT.value)
  print(f"wrote {_OUT.value}: {len(table.entries)} entries, {table.meta['device_kind']}, "
        f"batch {L.batch_size}, {dtype}, dispatch {table.dispatch_ms:.4f} ms")


def predict(config):
  if not _TABLE.value or not _GENOTYPE.value:
    raise latency_lib.LatencyError("predict needs --table and --genotype")
  table = latency_lib.LatencyTable.load(_TABLE.value)
  table.check(allow_foreign=_ALLOW_FOREIGN.value or not _MEASURE.value)
  genotype = darts.load_genotype(_GENOTYPE.value)
  layout = _layout(config)
  out = dict(predicted_ms=round(darts_latency.predict(table, layout, genotype), 5))
  if _MEASURE.value:
    measured = darts_latency.measure_network(layout, genotype,
                                             batch_size=table.meta["batch_size"],
                                             dtype=table.meta["dtype"])
    out.update(measured_ms=measured["median"], measured_q25=measured["q25"],
               measured_q75=measured["q75"])
  print(json.dumps(out))


def main(argv):
  {"profile": profile, "predict": predict}[argv[1]](_CONFIG.value)


if __name__ == "__main__":
  cli.run(main, commands=("profile", "predict"))
