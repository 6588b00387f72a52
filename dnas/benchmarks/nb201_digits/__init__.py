"""The NAS-Bench-201 digits benchmark: a search method against chance on a ground truth of
NAS-Bench-201 architectures trained on the embedded digits; the measures of
`python -m dnas.evaluate` (see there).

The table, `ground_truth.json` beside this file (`DEFAULT_TABLE`), ships as package data;
`experiments/nb201_digits/run.py` trains it under `dnas.spaces.nb201.ground_truth.PROTOCOL`.
"""

import functools
import importlib.resources
import json
import os
import sys
import time

import numpy as np
from scipy import stats

from dnas import search_lib
from dnas.config import ConfigError
from dnas.configs import nb201 as nb201_config
from dnas.data.pipeline import get_dataset, make_augment, make_batches, search_splits
from dnas.selection import one_hot_accuracies
from dnas.spaces.nb201 import ground_truth as gt
from dnas.spaces.nb201.structure import Structure

# A real file in an installed or source tree (setuptools installs package data unzipped).
DEFAULT_TABLE = str(importlib.resources.files(__name__) / "ground_truth.json")


def expected_best_of(accuracies, k: int) -> float:
  """E[max of k draws with replacement] from the empirical distribution `accuracies`:
  sum_i a_(i) ((i/n)^k - ((i-1)/n)^k) over the sorted values."""
  a = np.sort(np.asarray(accuracies, np.float64))
  n = len(a)
  i = np.arange(1, n + 1)
  return float(np.sum(a * ((i / n) ** k - ((i - 1) / n) ** k)))


def kendall_tau(x, y) -> float:
  """Kendall's tau-b of two rankings (ties handled as scipy does)."""
  return float(stats.kendalltau(x, y).statistic)


def supernet_accuracies(net, archs, batches, chunk: int = 16) -> np.ndarray:
  """f64[A]: the supernet's accuracy on `batches` with each architecture's one-hot op
  weights (`selection.one_hot_accuracies`)."""
  return one_hot_accuracies(net, gt.one_hot(archs, net.primitives), batches, chunk)


def within_budget(sample, measured: dict, budget_ms: float) -> list:
  """The sampled architectures whose measured latency is at most `budget_ms` (every
  measured one when `budget_ms` is 0)."""
  return [a for a in sample if a in measured and (budget_ms <= 0 or measured[a] <= budget_ms)]


def _update(config, saved: dict) -> None:
  """Sets `config`'s fields to a saved run's values (keys newer than the run keep their
  defaults; lists back to tuples where the config holds tuples)."""
  for k, v in saved.items():
    if k not in config:
      continue
    if isinstance(v, dict) and hasattr(config[k], "keys"):
      _update(config[k], v)
    else:
      config[k] = tuple(v) if isinstance(config[k], tuple) else v


def supernet_ranking(workdir: str, archs) -> np.ndarray:
  """f64[A]: the trained supernet of the nb201 digits search in `workdir` (run with its
  own saved `search_config.json`) scores each architecture string by its accuracy on the
  search's architecture split with one-hot op weights: the weight-sharing proxy that
  `evaluate_method` ranks by."""
  config = nb201_config.get_config()
  with open(os.path.join(workdir, "search_config.json")) as f:
    _update(config, json.load(f))
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  _, a_src = search_splits(splits["train"], config.data.train_portion)
  batches = list(make_batches(a_src, batch_size=config.search.batch_size, seed=0, epoch=0,
                              augment=make_augment(info), train=False))
  net = search_lib.load_supernet(config, workdir)
  return supernet_accuracies(net, [Structure.from_string(a) for a in archs], batches)


def random_search_percentiles(table, within, seeds, k: int, draws: int = 4000,
                              seed: int = 0) -> np.ndarray:
  """f64[draws]: random search at a search's cost, within the budget, on the table's own
  runs: `k` architectures drawn uniformly (with replacement) from `within`, each trained
  once (one of `seeds` drawn for each), the one with the best validation accuracy kept
  and measured like a find, by its test accuracy over its other seeds, as a percentile
  among the `within` architectures' means over `seeds`, its own mean replaced by that
  measurement (a find in the sample ties with itself: `gt.percentile_of`). Leaving the
  selecting run out keeps the winner's luck out of its measurement."""
  rng = np.random.default_rng(seed)
  rows = [table.results[a] for a in within]
  cols = [[r["seeds"].index(s) for s in seeds] for r in rows]
  valid = np.asarray([[r["valid_acc"][i] for i in c] for r, c in zip(rows, cols)])
  test = np.asarray([[r["test_acc"][i] for i in c] for r, c in zip(rows, cols)])
  means, n = test.mean(1), len(seeds)
  nets = rng.integers(0, len(within), (draws, k))
  runs = rng.integers(0, n, (draws, k))
  best = np.argmax(valid[nets, runs], 1)
  net, run = nets[np.arange(draws), best], runs[np.arange(draws), best]
  acc = (test[net].sum(1) - test[net, run]) / (n - 1)
  below = (means < acc[:, None]).sum(1) - (means[net] < acc)
  ties = (means == acc[:, None]).sum(1) - (means[net] == acc) + 1  # itself
  return 100.0 * (below + 0.5 * ties) / len(means)


def random_search_within_budget(table, within, seeds, k: int, top: float = 10.0,
                                draws: int = 4000, seed: int = 0) -> dict:
  """{k, percentile_mean, top_rate} of `random_search_percentiles`: the mean percentile
  over `draws` simulated random searches and the share in the top `top` % (a percentile
  >= 100 - top)."""
  pct = random_search_percentiles(table, within, seeds, k, draws, seed)
  return dict(k=int(k), percentile_mean=float(pct.mean()), top_rate=float(np.mean(pct >= 100 - top)))


def _mean(values):
  return float(np.mean(values)) if len(values) else None


def meets_budget(arch, measured: dict, budget_ms: float) -> bool:
  ms = measured.get(str(arch))
  return ms is not None and (budget_ms <= 0 or ms <= budget_ms)


def _budget_facts(arch, acc, within_truth, measured: dict, budget_ms: float) -> dict:
  """A find's measured latency and, when it meets the budget, the percentile of its
  accuracy `acc` among the accuracies `within_truth` of the sampled architectures within
  the budget (both over the same training seeds); None for a find over the budget."""
  meets = meets_budget(arch, measured, budget_ms)
  return dict(measured_ms=measured.get(str(arch)), budget_ms=budget_ms, meets_budget=meets,
              test_acc_budget_seeds=acc if meets else None,
              percentile_within_budget=gt.percentile_of(within_truth, acc) if meets else None,
              sample_within_budget=int(len(within_truth)))


def _check(config) -> None:
  if config.space != "nb201":
    raise ConfigError(f"dnas.evaluate measures searches of space nb201 (its ground truth); "
                      f"got space {config.space!r}")
  if config.data.name != gt.PROTOCOL["data"]:
    raise ConfigError(f"the ground truth is on data {gt.PROTOCOL['data']!r}; got "
                      f"data.name {config.data.name!r}")


def evaluate_method(config, workdir: str, seeds, table_path: str = DEFAULT_TABLE,
                    train_seconds: float | None = None, progress: bool = False,
                    measured_latency: dict | None = None,
                    budget_ms: float | None = None, budget_seeds: int | None = None) -> dict:
  """Runs and measures the search of `config` for each seed; returns the report (see the
  module docstring) and writes it to `workdir/evaluation.json`.

  `measured_latency` ({arch string: ms} on the latency table's device, e.g. EAGLE's):
  each find's measured latency, whether it meets `budget_ms` (default
  `config.latency.limit_ms`, else `target_ms`), and its percentile among the sampled architectures that
  meet it, with accuracies averaged over training seeds 0..`budget_seeds`-1 (default:
  the table's own seeds); seeds the table lacks for those architectures or the finds are
  trained and added to it (the within-budget networks differ by less than the table's
  two-seed noise)."""
  _check(config)
  if budget_ms is None:  # the search's own limit, else its target
    budget_ms = config.latency.limit_ms or config.latency.target_ms
  budget_ms = float(budget_ms)
  if budget_seeds is not None and budget_ms <= 0:
    raise ConfigError(f"budget_seeds={budget_seeds} needs a latency budget (--budget_ms, "
                      f"latency.limit_ms or latency.target_ms > 0), got {budget_ms}")
  try:
    table = gt.GroundTruth.load(table_path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read the ground truth {table_path}: {e}") from e
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  _, a_src = search_splits(splits["train"], config.data.train_portion)
  augment = make_augment(info)
  batches = list(make_batches(a_src, batch_size=config.search.batch_size, seed=0, epoch=0,
                              augment=augment, train=False))
  trained = [a for a in table.sample if a in table.results]
  # Fixed here: seeds trained below for the budget comparison must not move the rest.
  table_seeds = table.base_seeds
  truth = np.asarray([table.accuracy(a, table_seeds) for a in trained])
  seed_noise = table.seed_noise(trained, table_seeds)
  # The supernet ranks the sampled architectures made of its own candidate ops.
  ops = set(config.model.primitives)
  ranked = [i for i, a in enumerate(trained) if set(Structure.from_string(a).ops) <= ops]
  sample = [Structure.from_string(trained[i]) for i in ranked]
  train_fn = functools.cache(lambda: gt.make_train_fn(table.protocol))  # compiled once

  def ensure(archs, seeds):  # trains what the table lacks, into the table
    if not all(table.has(a, seeds) for a in archs):
      table.ensure(archs, seeds, train_fn(), path=table_path)
  runs = []
  if measured_latency is not None:
    within = within_budget(trained, measured_latency, budget_ms)
    b_seeds = table_seeds if budget_seeds is None else tuple(range(budget_seeds))
    ensure(within, b_seeds)
    within_truth = np.asarray([table.accuracy(a, b_seeds) for a in within])
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    run_dir = os.path.join(workdir, f"seed_{seed}")
    arch = search_lib.run_search(c, run_dir, progress=progress)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:  # the run's own clock, resumes too
      seconds = [json.loads(line) for line in f if line.strip()][-1]["wall_time"]
    chosen = os.path.join(run_dir, "selection.json")
    if os.path.exists(chosen):  # and what choosing cost after the epochs
      with open(chosen) as f:
        seconds += json.load(f)["seconds"]
    ensure([str(arch)], table_seeds)
    net = search_lib.load_supernet(c, run_dir)
    if c.search.selection == "supernet":
      net.train()  # the selection's own scoring: batch statistics per candidate
    proxy = supernet_accuracies(net, sample, batches)
    acc = table.accuracy(arch, table_seeds)
    runs.append(dict(seed=seed, arch=str(arch), test_acc=acc,
                     percentile=gt.percentile_of(truth, acc),
                     param_free_ops=arch.parameter_free_ops(), search_seconds=seconds,
                     kendall_tau=kendall_tau(proxy, truth[ranked])))
    if measured_latency is not None:
      b_acc = None
      if meets_budget(arch, measured_latency, budget_ms):  # only these are compared
        ensure([str(arch)], b_seeds)
        b_acc = table.accuracy(arch, b_seeds)
      runs[-1].update(_budget_facts(arch, b_acc, within_truth, measured_latency, budget_ms))
    print(f"seed {seed}: {arch} test_acc {acc:.4f} percentile {runs[-1]['percentile']:.1f} "
          f"param_free_ops {runs[-1]['param_free_ops']} tau {runs[-1]['kendall_tau']:.3f} "
          f"({seconds:.0f} s)", file=sys.stderr)
  if train_seconds is None:
    gt.train([trained[0]], [0], protocol=table.protocol, train_fn=train_fn())  # compiled
    start = time.perf_counter()
    gt.train([trained[1]], [0], protocol=table.protocol, train_fn=train_fn())
    train_seconds = time.perf_counter() - start
  mean_seconds = float(np.mean([r["search_seconds"] for r in runs]))
  k = max(1, int(mean_seconds // train_seconds))
  accs = np.asarray([r["test_acc"] for r in runs])
  report = dict(
      config_overrides=[a for a in sys.argv[1:] if a.startswith("--config")],
      runs=runs, test_acc_mean=float(accs.mean()), test_acc_std=float(accs.std()),
      percentile_mean=float(np.mean([r["percentile"] for r in runs])),
      param_free_ops_mean=float(np.mean([r["param_free_ops"] for r in runs])),
      kendall_tau_mean=float(np.mean([r["kendall_tau"] for r in runs])),
      search_seconds_mean=mean_seconds, train_seconds=train_seconds, random_k=k,
      random_best_of_k=expected_best_of(truth, k), sample_median=float(np.median(truth)),
      sample_best=float(truth.max()), sample_size=int(len(truth)), ranked=len(ranked),
      seed_noise=seed_noise)
  if measured_latency is not None:
    report.update(
        budget_ms=budget_ms, budget_seeds=len(b_seeds),
        within_budget_seed_noise=table.seed_noise(within, b_seeds),
        meets_budget=sum(r["meets_budget"] for r in runs),
        # finds in the top 10 % within the budget, and random search at the same cost
        top_within_budget=sum(bool(r["meets_budget"]) and r["percentile_within_budget"] >= 90
                              for r in runs),
        random_within_budget=random_search_within_budget(table, within, b_seeds, k),
        # over the finds that meet the budget (None when none does)
        percentile_within_budget_mean=_mean([r["percentile_within_budget"] for r in runs
                                             if r["meets_budget"]]))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "evaluation.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def format_report(r: dict) -> str:
  budget = []
  if "budget_ms" in r:
    ms = ", ".join("%.3f" % x["measured_ms"] if x["measured_ms"] else "?" for x in r["runs"])
    pct = ", ".join("-" if x["percentile_within_budget"] is None
                    else f"{x['percentile_within_budget']:.0f}" for x in r["runs"])
    mean = r["percentile_within_budget_mean"]
    budget = [f"latency: {r['meets_budget']} of {len(r['runs'])} finds meet {r['budget_ms']} "
              f"ms (measured: {ms} ms); percentile among the {r['runs'][0]['sample_within_budget']} "
              f"sampled within it {pct} (mean {'-' if mean is None else f'{mean:.1f}'}; "
              f"{r.get('budget_seeds', 2)} training seeds, seed noise "
              f"{100 * r.get('within_budget_seed_noise', np.nan):.2f} %)"]
    if "random_within_budget" in r:  # older reports lack these
      rs = r["random_within_budget"]
      budget.append(
          f"  top 10 % within it: {r['top_within_budget']} of {len(r['runs'])} finds; random "
          f"search at the same cost (the best validation accuracy of K={rs['k']} networks "
          f"within it, each trained once): percentile {rs['percentile_mean']:.1f} on "
          f"average, top 10 % {100 * rs['top_rate']:.0f} % of the time")
  return "\n".join(budget + [
      f"found: test_acc {100 * r['test_acc_mean']:.2f} +- {100 * r['test_acc_std']:.2f} % "
      f"over {len(r['runs'])} seeds, percentile {r['percentile_mean']:.1f}, parameter-free "
      f"ops {r['param_free_ops_mean']:.2f} of 6, Kendall tau {r['kendall_tau_mean']:.3f}",
      f"random: best of K={r['random_k']} (search {r['search_seconds_mean']:.0f} s / "
      f"{r['train_seconds']:.1f} s per training) {100 * r['random_best_of_k']:.2f} %; sample "
      f"median {100 * r['sample_median']:.2f} %, best {100 * r['sample_best']:.2f} % "
      f"({r['sample_size']} architectures; seed noise {100 * r['seed_noise']:.2f} %)"])


