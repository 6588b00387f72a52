"""Accuracy against measured latency over a sweep of latency weights.

python scripts/latency_pareto.py --out=/tmp/pareto [--config=dnas/configs/digits.py]
    [--objective=proxyless] [--weights=0,0.05,0.2,1] [--table=digits_cpu.json]
python scripts/latency_pareto.py --out=/tmp/pareto --remeasure_only --rounds=5

Searches with each latency weight, retrains each found cell, and measures each final
network end to end on this device.

Per weight: `python -m dnas.search` with `latency.objective` (weight 0: no latency term,
the baseline), then `python -m dnas.train` on its genotype (the config's retraining),
then the final network timed end to end (`latency.batch_size`, eval mode) beside the
table's prediction. At the end every found network is timed again side by side
(`--rounds` interleaved rounds; median of the rounds). Writes `<out>/pareto.jsonl` (as
it goes), `<out>/pareto_final.jsonl`, `<out>/pareto.png` (test accuracy against measured
latency) and a markdown table on stdout. Without `--table`, one table
is profiled first and shared by all runs.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dnas import latency as latency_lib, search_lib, train_lib, utils
from dnas.data.pipeline import dataset_info
from dnas.spaces import darts
from dnas.spaces.darts import latency as darts_latency

_CONFIG = config_flags.DEFINE_config_file("config", "dnas/configs/digits.py", "Config.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_OBJECTIVE = flags.DEFINE_string("objective", "proxyless", "latency.objective of the sweep.")
_WEIGHTS = flags.DEFINE_list("weights", ["0", "0.05", "0.2", "1"], "latency.weight values; "
                             "0 runs without the latency term.")
_TABLE = flags.DEFINE_string("table", "", "Latency table (empty: profile one first).")
_TARGET = flags.DEFINE_float("target_ms", 0.0, "latency.target_ms for objective=target.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Final side-by-side timing: rounds over all "
                               "networks (interleaved, so drifts of the machine hit all).")
_REMEASURE_ONLY = flags.DEFINE_bool("remeasure_only", False, "Skip the searches: time the "
                                    "networks of an existing <out>/pareto.jsonl again.")


def main(argv):
  del argv
  utils.configure_xla()
  os.makedirs(_OUT.value, exist_ok=True)
  base = _CONFIG.value
  info = dataset_info(base.data.name, base.data.image_size, base.data.data_dir)
  layout = darts_latency.layout_for(base.model, base.train, info)
  table_path = _TABLE.value or os.path.join(_OUT.value, "latency_table.json")
  if not os.path.exists(table_path):
    darts_latency.profile(layout, tuple(base.model.primitives),
                          batch_size=base.latency.batch_size, dtype=base.get("dtype", "float32"),
                          repeats=base.latency.repeats).save(table_path)
  table = latency_lib.LatencyTable.load(table_path)
  rows = [] if not _REMEASURE_ONLY.value else [
      json.loads(l) for l in open(os.path.join(_OUT.value, "pareto.jsonl"))]
  for w in ([] if _REMEASURE_ONLY.value else (float(v) for v in _WEIGHTS.value)):
    config = base.copy_and_resolve_references()
    config.latency.table = table_path
    config.latency.objective = _OBJECTIVE.value if w > 0 else "none"
    config.latency.weight = w
    config.latency.target_ms = _TARGET.value
    workdir = os.path.join(_OUT.value, f"w{w:g}")
    genotype = search_lib.run_search(config, workdir, progress=False)
    result = train_lib.run_train(config, os.path.join(workdir, "genotype.json"), workdir,
                                 progress=False)
    measured = darts_latency.measure_network(layout, genotype,
                                             batch_size=table.meta["batch_size"],
                                             dtype=table.meta["dtype"])
    row = dict(weight=w, objective=config.latency.objective, genotype=genotype.to_dict(),
               test_acc=result["test_acc"], params=result["params"],
               predicted_ms=round(darts_latency.predict(table, layout, genotype), 4),
               measured_ms=measured["median"], measured_q25=measured["q25"],
               measured_q75=measured["q75"])
    rows.append(row)
    with open(os.path.join(_OUT.value, "pareto.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
  # Side by side: every network timed once per round, rounds interleaved; the median over
  # rounds of each network's median is the figure reported.
  compiled = [darts_latency.compile_network(layout, darts.Genotype.from_dict(r["genotype"]),
                                            batch_size=table.meta["batch_size"],
                                            dtype=table.meta["dtype"]) for r in rows]
  times = [[] for _ in rows]
  for _ in range(_ROUNDS.value):
    for i, (forward, args) in enumerate(compiled):
      times[i].append(latency_lib.time_call(forward, *args)["median"])
  for r, t in zip(rows, times):
    r.update(measured_ms=round(float(np.median(t)), 4), measured_rounds=t)
  with open(os.path.join(_OUT.value, "pareto_final.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  baseline = next((r for r in rows if r["weight"] == 0), rows[0])
  print("| latency weight | test acc | measured ms (median) | vs no latency term | "
        "predicted ms | params |")
  print("|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['weight']:g} | {100 * r['test_acc']:.2f} % | {r['measured_ms']:.3f} | "
          f"{r['measured_ms'] / baseline['measured_ms']:.2f}x | {r['predicted_ms']:.3f} | "
          f"{r['params']:,} |")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot([r["measured_ms"] for r in rows], [100 * r["test_acc"] for r in rows], "o")
  for r in rows:
    ax.annotate(f"w={r['weight']:g}", (r["measured_ms"], 100 * r["test_acc"]),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel(f"measured latency (ms, batch {table.meta['batch_size']}, "
                f"{table.meta['device_kind']})")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{base.data.name}: latency weight sweep ({_OBJECTIVE.value})")
  fig.tight_layout()
  fig.savefig(os.path.join(_OUT.value, "pareto.png"), dpi=120)


if __name__ == "__main__":
  app.run(main)
