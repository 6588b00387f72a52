"""Checks a latency table's predictions against end-to-end timings of final networks.

python scripts/bench_latency.py [--config=dnas/configs/digits.py] [--random=20]
    [--table=latency_table.json] [--genotypes=runs/a/genotype.json,...] [--plot=lat.png]

Is the latency table's prediction true? Measures final networks end to end and compares
them with the table's per-op sums.

Networks: `--random` genotypes drawn uniformly (two distinct inputs and a non-`none` op
per node), DARTS_V1, DARTS_V2 and the `--genotypes` files (e.g. searched ones), each the
config's final network (`train.*`), eval mode, `latency.batch_size`, the config's dtype.
Without `--table` one is profiled first on this device. Prints one JSON line per network
and a summary line: Spearman rank correlation and mean absolute percentage error (MAPE)
of prediction against measurement, and their medians and ratio; for a calibrated table
(`python -m dnas.latency calibrate`, fitted on other random networks) also the figures
without its correction.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import stats

from dnas import latency as latency_lib, utils
from dnas.data.pipeline import dataset_info
from dnas.spaces import darts
from dnas.spaces.darts import latency as darts_latency

_CONFIG = config_flags.DEFINE_config_file("config", "dnas/configs/digits.py", "Config.")
_TABLE = flags.DEFINE_string("table", "", "Latency table (empty: profile one here first).")
_RANDOM = flags.DEFINE_integer("random", 20, "Random genotypes.")
_GENOTYPES = flags.DEFINE_list("genotypes", [], "More genotype files (searched ones).")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls per network and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds over all networks, interleaved (the "
                               "median over rounds is reported), so that drifts of the "
                               "machine hit every network alike.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random genotypes.")
_PLOT = flags.DEFINE_string("plot", "", "PNG of predicted against measured latency.")
_SAVE_TABLE = flags.DEFINE_string("save_table", "", "Where to write a profiled table.")


def main(argv):
  del argv
  utils.configure_xla()
  config = _CONFIG.value
  m, L = config.model, config.latency
  dtype = config.get("dtype", "float32")
  info = dataset_info(config.data.name, config.data.image_size, config.data.data_dir)
  layout = darts_latency.layout_for(config.model, config.train, info)
  primitives = tuple(m.primitives)
  if _TABLE.value:
    table = latency_lib.LatencyTable.load(_TABLE.value)
    table.check(batch_size=L.batch_size, dtype=dtype)
  else:
    t = time.perf_counter()
    table = darts_latency.profile(layout, primitives, batch_size=L.batch_size, dtype=dtype,
                                  repeats=L.repeats)
    print(json.dumps(dict(profiled_entries=len(table.entries),
                          profile_s=round(time.perf_counter() - t, 1),
                          dispatch_ms=table.dispatch_ms)), flush=True)
    if _SAVE_TABLE.value:
      table.save(_SAVE_TABLE.value)
  rng = np.random.default_rng(_SEED.value)
  cases = [(f"random{i}", darts_latency.random_genotype(rng, primitives, m.steps, m.multiplier))
           for i in range(_RANDOM.value)]
  cases += [("DARTS_V1", darts.DARTS_V1), ("DARTS_V2", darts.DARTS_V2)]
  cases += [(path, darts.load_genotype(path)) for path in _GENOTYPES.value]
  raw_table = table.without_correction()
  compiled = [darts_latency.compile_network(layout, g, batch_size=L.batch_size, dtype=dtype)
              for _, g in cases]
  rounds = [[] for _ in cases]
  for _ in range(_ROUNDS.value):
    for i, (forward, args) in enumerate(compiled):
      rounds[i].append(latency_lib.time_call(forward, *args, repeats=_REPEATS.value)["median"])
  predicted, raw, measured = [], [], []
  for (name, genotype), times in zip(cases, rounds):
    pred = darts_latency.predict(table, layout, genotype)
    raw.append(darts_latency.predict(raw_table, layout, genotype))
    predicted.append(pred)
    measured.append(float(np.median(times)))
    print(json.dumps(dict(name=name, predicted_ms=round(pred, 4), uncorrected_ms=round(raw[-1], 4),
                          measured_ms=round(measured[-1], 4), measured_rounds=times,
                          error_pct=round(100 * (pred - measured[-1]) / measured[-1], 2))),
          flush=True)
  p, q, r = np.asarray(predicted), np.asarray(measured), np.asarray(raw)
  ape = np.abs(p - q) / q
  print(json.dumps(dict(
      summary=True, networks=len(cases), device=jax.devices()[0].device_kind,
      batch_size=L.batch_size, dtype=dtype, network=layout.network, image=list(layout.image),
      C=layout.C, layers=len(layout.cells), spearman=round(float(stats.spearmanr(p, q)[0]), 4),
      mape_pct=round(100 * float(ape.mean()), 2), max_ape_pct=round(100 * float(ape.max()), 2),
      median_predicted_ms=round(float(np.median(p)), 4),
      median_measured_ms=round(float(np.median(q)), 4),
      median_ratio=round(float(np.median(p / q)), 4),
      corrected="correction" in table.meta,
      uncorrected_spearman=round(float(stats.spearmanr(r, q)[0]), 4),
      uncorrected_mape_pct=round(100 * float(np.mean(np.abs(r - q) / q)), 2))), flush=True)
  if _PLOT.value:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(q, p, s=14)
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted by the table (ms)")
    ax.set_title(f"{layout.network} C={layout.C} {len(layout.cells)} cells, "
                 f"batch {L.batch_size}")
    fig.tight_layout()
    fig.savefig(_PLOT.value, dpi=120)


if __name__ == "__main__":
  app.run(main)
