"""Fits a NAS-Bench-201 latency table for another device from its measured networks.

python scripts/eagle_latency.py --data=../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json \
    --train=500 --out=experiments/nb201_eagle/latency_table_i7-7820x.json

Fits on at most `--train` of the device's measured networks and predicts the rest
(nn-Meter's measures).

The data: EAGLE (BRP-NAS, Dudziak et al., NeurIPS 2020), whole-network latencies of
NAS-Bench-201 architectures on one device. The model: `dnas.spaces.nb201.latency` (active
edges' op costs plus pairwise terms by edge relation). Prints and writes (next to the
table, `.report.json`) Spearman's rho, the mean absolute percentage error and the share
of predictions within +-10 % on the networks not used for fitting.
"""

import json
import os

import numpy as np
from absl import app, flags
from scipy import stats

from dnas.latency.table import device_stamp
from dnas.spaces.nb201 import latency
from dnas.spaces.nb201.structure import Structure

flags.DEFINE_string("data", "../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json",
                    "EAGLE-format JSON: {'latency_ms': {arch string: ms}, 'source': ...}")
flags.DEFINE_integer("train", 500, "networks to fit on (a seeded uniform draw)")
flags.DEFINE_integer("seed", 0, "seed of the draw")
flags.DEFINE_float("ridge", 0.01, "ridge penalty of the fit")
flags.DEFINE_string("device", "Intel Core i7-7820X", "the device's name (the table's stamp)")
flags.DEFINE_integer("batch_size", 1, "the batch size the data was measured at")
flags.DEFINE_string("out", "", "where to write the table (optional)")
FLAGS = flags.FLAGS


def measures(pred, true) -> dict:
  pred, true = np.asarray(pred), np.asarray(true)
  err = np.abs(pred - true) / true
  return dict(spearman=float(stats.spearmanr(pred, true).statistic),
              mape_pct=float(100 * err.mean()), within_10_pct=float(100 * (err <= 0.1).mean()),
              networks=int(len(true)))


def split(latency_ms: dict, n: int, seed: int):
  keys = sorted(latency_ms)
  np.random.default_rng(seed).shuffle(keys)
  return keys[:n], keys[n:]


def main(argv):
  del argv
  with open(FLAGS.data) as f:
    data = json.load(f)
  lat = data["latency_ms"]
  train, test = split(lat, FLAGS.train, FLAGS.seed)
  meta = dict(device_stamp(), backend="cpu", device_kind=FLAGS.device, cpu_model=FLAGS.device,
              batch_size=FLAGS.batch_size, dtype="float32", unit="ms", dispatch_ms=0.0,
              source=data.get("source", FLAGS.data), fitted_on=FLAGS.train, seed=FLAGS.seed)
  meta.pop("jax_version", None)
  table = latency.fit({k: lat[k] for k in train}, meta=meta, ridge=FLAGS.ridge)
  coef = latency.coefficients(table)
  pred = [latency.features(Structure.from_string(k)) @ coef for k in test]
  report = dict(measures(pred, [lat[k] for k in test]), train=len(train),
                fit_mape_pct=table.meta["fit_mape_pct"])
  print(json.dumps(report))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    table.save(FLAGS.out)
    with open(os.path.splitext(FLAGS.out)[0] + ".report.json", "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  app.run(main)
