"""Latency-aware search in the mobile space against random networks, timed in ONNX Runtime.

python scripts/mobile_pareto.py --out=/tmp/mobile_pareto [--shard=0 --num_shards=2]
python scripts/mobile_pareto.py --out=/tmp/mobile_pareto --report --rounds=5

Runs (each row appended to <out>/rows-<shard>.jsonl as it finishes; a rerun splits the
rows that no shard has finished among the shards, so shards run side by side and a
killed run continues):
  * `--weights` x `--seeds` searches of `--config` (mobile_digits.py: ProxylessNAS's binary
    gates) with `latency.objective=proxyless` and the table measured in ONNX Runtime
    (profiled once into <out>/table.json; weight 0: no latency term), each find retrained
    by `dnas.train`'s loop with the search's seed;
  * `--random` networks drawn uniformly from the searched layout, retrained the same way;
  * every retrained network exported to ONNX (`dnas.deploy`) as <workdir>/model.onnx.
`--report` (run it on an otherwise idle machine) times every model.onnx end to end in ONNX
Runtime, side by side (`--rounds` interleaved rounds of `--repeats` calls; the median of
the round medians), and writes <out>/report.json, <out>/pareto.png and a markdown summary:
per weight the searched networks' mean and spread of test accuracy and measured latency
against the best random network at no more latency, and how well the table predicts the
measured latency (Spearman, mean absolute error).
"""

import glob
import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import stats

from dnas import latency, search_lib, spaces, train_lib, utils
from dnas import config as config_lib
from dnas.data.pipeline import dataset_info
from dnas.deploy import inference_fn, runtimes

_CONFIG = config_flags.DEFINE_config_file("config", "dnas/configs/mobile_digits.py", "Config.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_WEIGHTS = flags.DEFINE_list("weights", ["0", "0.3", "3"], "latency.weight values (0: no "
                             "latency term).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Search (and retraining) seeds.")
_RANDOM = flags.DEFINE_integer("random", 20, "Random networks of the layout.")
_SHARD = flags.DEFINE_integer("shard", 0, "This process's share of the runs.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Processes sharing the runs.")
_REPORT = flags.DEFINE_bool("report", False, "Time the exported models side by side and "
                            "report (no searches).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "--report: interleaved timing rounds.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "--report: calls per network and round.")
_REEXPORT = flags.DEFINE_bool("reexport", False, "--report: convert every trained network "
                              "to ONNX again first (after a change to the converter).")
_REPROFILE = flags.DEFINE_bool("reprofile", True, "--report: also profile the table again "
                               "just before the timing rounds and judge its predictions too "
                               "(this VM's speed drifts between a sweep and its report).")


def _jobs():
  searched = [dict(kind="search", weight=float(w), seed=int(s), name=f"w{w}_s{s}")
              for s in _SEEDS.value for w in _WEIGHTS.value]
  drawn = [dict(kind="random", weight=None, seed=i, name=f"random{i:02d}")
           for i in range(_RANDOM.value)]
  # Interleaved, so that a partial sweep has some of both.
  return [j for pair in zip(searched + [None] * len(drawn), drawn + [None] * len(searched))
          for j in pair if j is not None]


def _table(base, space, info, out):
  path = os.path.join(out, "table.json")
  if not os.path.exists(path):  # one process profiles; the other waits for the file
    table = space.latency_profile(config_lib.space_section(base), base.train, info,
                                  batch_size=base.latency.batch_size, dtype=base.dtype,
                                  repeats=base.latency.repeats, runtime="onnxruntime")
    table.save(path + ".tmp")
    os.replace(path + ".tmp", path)
  return path


def _export(workdir, space, shape):
  """<workdir>/model.onnx of the network trained in <workdir>/trained."""
  net, _, _, _ = train_lib.load_trained(os.path.join(workdir, "trained"))
  model = runtimes.compile_fn("onnxruntime", inference_fn(net, None, space.final_apply),
                              shape).model
  with open(os.path.join(workdir, "model.onnx"), "wb") as f:
    f.write(model.SerializeToString())


def _run(job, base, space, info, table_path, out) -> dict:
  workdir = os.path.join(out, job["name"])
  config = base.copy_and_resolve_references()
  config.seed = job["seed"] if job["kind"] == "search" else 0
  if job["kind"] == "search":
    config.latency.table = table_path
    config.latency.objective = "proxyless" if job["weight"] > 0 else "none"
    config.latency.weight = job["weight"]
    arch = search_lib.run_search(config, workdir, progress=False)
  else:
    rng = np.random.default_rng(1000 + job["seed"])
    arch = space.random_arch(rng, config_lib.space_section(config), info)
    os.makedirs(workdir, exist_ok=True)
    spaces.save(space, arch, os.path.join(workdir, "genotype.json"))
  result = train_lib.run_train(config, os.path.join(workdir, "genotype.json"), workdir,
                               progress=False)
  _export(workdir, space, (base.latency.batch_size,) + tuple(info.image_shape))
  table = latency.LatencyTable.load(table_path)
  predicted = space.latency_model(table, config_lib.space_section(config), config.train,
                                  info).predict(arch)
  return dict(job, arch=space.to_dict(arch), test_acc=result["test_acc"],
              params=result["params"], predicted_ms=round(predicted, 5))


def _sweep(base, space, info, out):
  table_path = _table(base, space, info, out)
  rows_path = os.path.join(out, f"rows-{_SHARD.value}.jsonl")
  # What no shard has finished, split among the shards (a search killed midway resumes
  # from its checkpoint, in whichever shard takes it).
  done = {json.loads(l)["name"] for p in glob.glob(os.path.join(out, "rows-*.jsonl"))
          for l in open(p)}
  todo = [j for j in _jobs() if j["name"] not in done]
  for job in todo[_SHARD.value::_NUM_SHARDS.value]:
    row = _run(job, base, space, info, table_path, out)
    with open(rows_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("name", "test_acc", "predicted_ms")}), flush=True)


def _report(base, out):
  rows = [json.loads(l) for p in sorted(glob.glob(os.path.join(out, "rows-*.jsonl")))
          for l in open(p)]
  shape = (base.latency.batch_size,) + tuple(dataset_info(
      base.data.name, base.data.image_size, base.data.data_dir).image_shape)
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  if _REEXPORT.value:
    for r in rows:
      _export(os.path.join(out, r["name"]), spaces.get(base.space), shape)
  fresh = None
  if _REPROFILE.value:
    space, info = spaces.get(base.space), dataset_info(base.data.name, base.data.image_size,
                                                       base.data.data_dir)
    fresh = space.latency_profile(config_lib.space_section(base), base.train, info,
                                  batch_size=base.latency.batch_size, dtype=base.dtype,
                                  repeats=base.latency.repeats, runtime="onnxruntime")
    fresh.save(os.path.join(out, "table_report.json"))
    model = space.latency_model(fresh, config_lib.space_section(base), base.train, info)
    for r in rows:
      r["predicted_fresh_ms"] = round(model.predict(space.from_dict(r["arch"])), 5)
  sessions = [runtimes.ort_session(open(os.path.join(out, r["name"], "model.onnx"), "rb")
                                   .read()) for r in rows]
  calls = [lambda x, s=s: s.run(None, {"images": x})[0] for s in sessions]
  times = [[] for _ in rows]
  for _ in range(_ROUNDS.value):
    for i, call in enumerate(calls):
      times[i].append(latency.time_call(call, x, repeats=_REPEATS.value)["median"])
  for r, t in zip(rows, times):
    r.update(measured_ms=round(float(np.median(t)), 5), measured_rounds=t)
  drawn = [r for r in rows if r["kind"] == "random"]
  summary = []
  for w in sorted({r["weight"] for r in rows if r["kind"] == "search"}):
    found = [r for r in rows if r["kind"] == "search" and r["weight"] == w]
    acc = np.array([r["test_acc"] for r in found])
    ms = np.array([r["measured_ms"] for r in found])
    # The random networks at no more latency than the searched networks' mean.
    under = [r["test_acc"] for r in drawn if r["measured_ms"] <= ms.mean()]
    summary.append(dict(weight=w, n=len(found), acc_mean=float(acc.mean()),
                        acc_std=float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                        ms_mean=float(ms.mean()), ms_std=float(ms.std(ddof=1)) if len(ms) > 1
                        else 0.0, random_under=len(under),
                        best_random_acc_under=max(under) if under else None,
                        random_better_under=int(sum(a > acc.mean() for a in under))))
  meas = np.array([r["measured_ms"] for r in rows])

  def fit_of(key):
    pred = np.array([r[key] for r in rows])
    return dict(spearman=float(stats.spearmanr(pred, meas).statistic),
                mean_abs_err_pct=float(np.mean(np.abs(pred / meas - 1)) * 100),
                networks=len(rows))
  fit = fit_of("predicted_ms")
  fresh_fit = fit_of("predicted_fresh_ms") if fresh is not None else None
  table_meta = latency.LatencyTable.load(os.path.join(out, "table.json")).meta
  report = dict(summary=summary, table_fit=fit, fresh_table_fit=fresh_fit, rows=rows, runtime=runtimes.stamp("onnxruntime"),
                cpu=latency.cpu_model(), batch=shape[0], table_meta=table_meta)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"{len(drawn)} random networks: test acc {np.mean([r['test_acc'] for r in drawn]):.4f} "
        f"mean, {max(r['test_acc'] for r in drawn):.4f} best; measured "
        f"{min(r['measured_ms'] for r in drawn):.3f}-{max(r['measured_ms'] for r in drawn):.3f}"
        f" ms")
  print("| latency weight | searches | test acc (mean +- sd) | measured ms (mean +- sd) | "
        "random at <= that latency | best of them | random better than the mean |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for s in summary:
    best = "-" if s["best_random_acc_under"] is None else f"{100 * s['best_random_acc_under']:.2f} %"
    print(f"| {s['weight']:g} | {s['n']} | {100 * s['acc_mean']:.2f} +- {100 * s['acc_std']:.2f} % "
          f"| {s['ms_mean']:.3f} +- {s['ms_std']:.3f} | {s['random_under']} | {best} | "
          f"{s['random_better_under']} |")
  for name, f in (("the search's table", fit), ("the table profiled now", fresh_fit)):
    if f:
      print(f"{name} vs measured ({f['networks']} networks): Spearman {f['spearman']:.3f}, "
            f"mean |error| {f['mean_abs_err_pct']:.1f} %")
  _plot(rows, summary, report, os.path.join(out, "pareto.png"))


def _plot(rows, summary, report, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4.2))
  drawn = [r for r in rows if r["kind"] == "random"]
  ax.plot([r["measured_ms"] for r in drawn], [100 * r["test_acc"] for r in drawn], "o",
          color="0.6", label=f"random ({len(drawn)})")
  for s, color in zip(summary, plt.cm.viridis(np.linspace(0, 0.85, len(summary)))):
    found = [r for r in rows if r["kind"] == "search" and r["weight"] == s["weight"]]
    ax.plot([r["measured_ms"] for r in found], [100 * r["test_acc"] for r in found], "^",
            color=color, label=f"searched, latency weight {s['weight']:g}")
  ax.set_xlabel(f"measured latency, ONNX Runtime {report['runtime']['runtime_version']} "
                f"(ms, batch {report['batch']})")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("mobile space on digits: search vs random networks", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  utils.configure_xla()
  os.makedirs(_OUT.value, exist_ok=True)
  base = _CONFIG.value
  if _REPORT.value:
    return _report(base, _OUT.value)
  space = spaces.get(base.space)
  info = dataset_info(base.data.name, base.data.image_size, base.data.data_dir)
  _sweep(base, space, info, _OUT.value)


if __name__ == "__main__":
  app.run(main)
