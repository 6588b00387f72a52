"""How finely the NAS-Bench-201 digits ground truth ranks architectures: the numbers
behind "top 5 % of the sample" and "top 10 % of the sample within a latency budget".

python experiments/nb201_digits/ground_truth_resolution.py \
    --measured_latency=../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json --budget_ms=3

Prints, for the uniform sample over its two base seeds: how often an architecture in the
top q % by one training seed is in the top q % by the other. For the sampled
architectures within the budget, over every seed all of them have: the pooled
seed-to-seed std, the spread of their means and the true spread it implies, the
split-half agreement (first half of the seeds against the second) and its Spearman-Brown
reliability for the full mean; and, from a normal model with those numbers, how often a
perfect search (the truly best of the sampled architectures within the budget) would
measure in their top 10 %, and on all of 3 search seeds. With `--supernet=WORKDIR` (an
nb201 digits search of the full space), Kendall's tau between that trained supernet's
ranking (`dnas.evaluate`'s weight-sharing proxy) and the table's, over the sample and
within the budget: whether the search could see the differences at all.

python experiments/nb201_digits/ground_truth_resolution.py --supernet=runs/hess_beta_darts \
    --measured_latency=../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json --budget_ms=3

With `--random_k=K`, the same normal model gives random search at equal cost (K
architectures within the budget trained once each, the best run kept); with
`--evaluations=A.json,...` (`dnas.evaluate` reports with `--budget_seeds` the table's
seeds), each report's rate of finds in the top 10 % within the budget, with its exact
interval and binomial tests against a random pick, a perfect search and random search,
and its mean percentile against random searches replayed on the table's own runs; with
`--best_of=2,4`, DARTS's best-of-R protocol replayed on the report's searches.
"""

import json

import numpy as np
from absl import app, flags
from scipy import stats

from dnas.benchmarks.nb201_digits import (DEFAULT_TABLE, random_search_percentiles,
                                         supernet_ranking, within_budget)
from dnas.spaces.nb201 import ground_truth as gt

_TABLE = flags.DEFINE_string("ground_truth", DEFAULT_TABLE, "The ground-truth table.")
_MEASURED = flags.DEFINE_string("measured_latency", None, "JSON {'latency_ms': {arch: ms}}.")
_BUDGET = flags.DEFINE_float("budget_ms", 3.0, "The latency budget.")
_TOP = flags.DEFINE_float("top", 10.0, "The within-budget bar: top this many percent.")
_DRAWS = flags.DEFINE_integer("draws", 20_000, "Simulated re-measurements.")
_SUPERNET = flags.DEFINE_string("supernet", None, "A full-space nb201 search's workdir.")
_RANDOM_K = flags.DEFINE_integer(
    "random_k", 0, "Also: random search at equal cost, the best of this many architectures "
    "within the budget, each trained once (a search's seconds / one training's).")
_BEST_OF = flags.DEFINE_list(
    "best_of", [], "For each of --evaluations: DARTS's protocol replayed on its searches, "
    "the best of R (each value of this list) by one training's validation accuracy.")
_EVALUATIONS = flags.DEFINE_list(
    "evaluations", [], "`dnas.evaluate` reports (evaluation.json) made with --budget_seeds "
    "equal to the table's seeds within the budget: their finds' rate of the top --top % "
    "against a random pick, a perfect search and (with --random_k) random search.")


def replication(accs: np.ndarray, q: float) -> float:
  """P(top q % by seed 1 | top q % by seed 0); accs f64[A, 2]. The top q % are the
  round(q A / 100) best by each seed, ties broken by architecture order (accuracies
  fall on a grid of 1/360)."""
  k = max(1, round(q * len(accs) / 100))
  top = [np.isin(np.arange(len(accs)), np.argsort(-a, kind="stable")[:k]) for a in accs.T]
  return float(top[1][top[0]].mean())


def perfect_search_rate(true_spread, noise, n_sample, n_seeds, top, draws, rng) -> float:
  """P(the truly best of `n_sample` architectures measures in the top `top` % of them)
  when true accuracies ~ N(0, true_spread) and each mean carries N(0, noise^2/n_seeds)."""
  t = rng.normal(0.0, true_spread, (draws, n_sample))
  m = t + rng.normal(0.0, noise / np.sqrt(n_seeds), t.shape)
  best = m[np.arange(draws), np.argmax(t, 1)]
  # Its percentile among them as `dnas.evaluate` computes a find's (ties, itself, half).
  pct = 100.0 * ((m < best[:, None]).sum(1) + 0.5 * (m == best[:, None]).sum(1)) / n_sample
  return float(np.mean(pct >= 100 - top))


def random_search_rate(true_spread, noise, n_sample, k, n_seeds, top, draws, rng) -> float:
  """P(random search at equal cost measures in the top `top` %): of `n_sample`
  architectures (true accuracies ~ N(0, true_spread)), `k` drawn at random are each
  trained once (noise N(0, noise^2)) and the best of those runs is kept; it is then
  measured like a search's find, its `n_seeds`-seed mean against the others'."""
  t = rng.normal(0.0, true_spread, (draws, n_sample))
  m = t + rng.normal(0.0, noise / np.sqrt(n_seeds), t.shape)
  drawn = np.argsort(rng.random((draws, n_sample)), 1)[:, :k]
  once = np.take_along_axis(t, drawn, 1) + rng.normal(0.0, noise, (draws, k))
  pick = drawn[np.arange(draws), np.argmax(once, 1)]
  got = m[np.arange(draws), pick]
  pct = 100.0 * ((m < got[:, None]).sum(1) + 0.5 * (m == got[:, None]).sum(1)) / n_sample
  return float(np.mean(pct >= 100 - top))


def best_of_searches_rate(finds, meets, table, seeds, within, within_means, repeats, top,
                          draws, rng):
  """DARTS's evaluation protocol (Liu et al., ICLR 2019, Sec. 3.2: four searches, the
  cell with the best validation accuracy after a short training from scratch kept),
  replayed on the table: `repeats` of the searches' `finds` (arch strings; `meets[i]`:
  whether find i is within the budget) drawn at random, each scored by the validation
  accuracy of one of its training seeds drawn at random, the best kept. A kept find over
  the budget is a miss (validation accuracy does not see latency); one within it is
  measured by its test accuracy over the other `seeds`, as a percentile among
  `within_means` (the means over `seeds` of the sampled architectures `within` the
  budget; a find among them ties with itself). Returns P(the kept find is in the top
  `top` %)."""
  hits = 0
  for _ in range(draws):
    best, best_valid = None, -np.inf
    for i in rng.choice(len(finds), repeats, replace=False):
      row = table.results[finds[i]]
      s = int(rng.choice(seeds if meets[i] else row["seeds"]))
      valid = row["valid_acc"][row["seeds"].index(s)]
      if valid > best_valid:
        best, best_valid, best_seed = i, valid, s
    if meets[best]:
      acc = table.accuracy(finds[best], [x for x in seeds if x != best_seed])
      ref = np.array(within_means, np.float64)
      if finds[best] in within:
        ref[within.index(finds[best])] = acc
      hits += gt.percentile_of(ref, acc) >= 100 - top
  return hits / draws


def compare_evaluation(name, report, rates, top):
  """A `dnas.evaluate` report's (`name`: its path) finds in the top `top` % within its
  budget (finds over the budget count as misses) against `rates` ({name: per-seed
  rate}): prints the count, its exact 95 % interval and two-sided exact binomial
  p-values."""
  runs = report["runs"]
  hits = sum(bool(r.get("meets_budget")) and r["percentile_within_budget"] >= 100 - top
             for r in runs)
  test = stats.binomtest(hits, len(runs))
  ci = test.proportion_ci(method="exact")
  against = ", ".join(f"{name} {rate:.2f} (p {stats.binomtest(hits, len(runs), rate).pvalue:.3f})"
                      for name, rate in rates.items())
  print(f"  {name}: top {top:g} % within the budget on {hits} of {len(runs)} search seeds "
        f"({hits / len(runs):.2f}, 95 % interval {ci.low:.2f}-{ci.high:.2f}); against {against}")


def main(argv):
  del argv
  table = gt.GroundTruth.load(_TABLE.value)
  sample = [a for a in table.sample if a in table.results]
  s0, s1 = table.base_seeds[:2]
  accs = np.asarray([[table.accuracy(a, [s0]), table.accuracy(a, [s1])] for a in sample])
  print(f"sample: {len(sample)} architectures, seed {s0} against seed {s1}: Spearman "
        f"{stats.spearmanr(accs[:, 0], accs[:, 1]).statistic:.3f}")
  for q in (5, 10, 25):
    print(f"  top {q} % by seed {s0} -> top {q} % by seed {s1}: {replication(accs, q):.2f}")
  if _SUPERNET.value:
    proxy = supernet_ranking(_SUPERNET.value, sample)
    print(f"  the supernet of {_SUPERNET.value} against the means of seeds {s0} and {s1}: "
          f"Kendall {stats.kendalltau(proxy, accs.mean(1)).statistic:.3f}")
  if not _MEASURED.value:
    return
  with open(_MEASURED.value) as f:
    measured = json.load(f)["latency_ms"]
  within = within_budget(sample, measured, _BUDGET.value)
  if len(within) < 2:
    raise SystemExit(f"{len(within)} sampled architectures within {_BUDGET.value} ms")
  seeds = sorted(set.intersection(*(set(table.results[a]["seeds"]) for a in within)))
  acc = np.asarray([[table.accuracy(a, [s]) for s in seeds] for a in within])
  noise = float(np.sqrt(np.mean(acc.var(1, ddof=1))))
  means = acc.mean(1)
  true_spread = float(np.sqrt(max(0.0, means.var(ddof=1) - noise ** 2 / len(seeds))))
  h = len(seeds) // 2  # two halves of h seeds (an odd last seed left out)
  half = stats.spearmanr(acc[:, :h].mean(1), acc[:, h:2 * h].mean(1)).statistic
  tau = stats.kendalltau(acc[:, :h].mean(1), acc[:, h:2 * h].mean(1))
  print(f"within {_BUDGET.value} ms: {len(within)} sampled architectures, {len(seeds)} seeds; "
        f"one run's noise {100 * noise:.2f} %, spread of the means {100 * means.std(ddof=1):.2f} "
        f"%, true spread {100 * true_spread:.2f} %")
  print(f"  seeds {seeds[:h]} vs {seeds[h:2 * h]}: Spearman {half:.3f}, Kendall "
        f"{tau.statistic:.3f} (p {tau.pvalue:.2f}); reliability of the {2 * h}-seed mean "
        f"{2 * half / (1 + half):.2f} (Spearman-Brown on Spearman's rho)")
  if _SUPERNET.value:
    inside = np.asarray([sample.index(a) for a in within])
    t = stats.kendalltau(proxy[inside], means)
    print(f"  the supernet against the {len(seeds)}-seed means: Kendall {t.statistic:.3f} "
          f"(p {t.pvalue:.2f})")
  rng = np.random.default_rng(0)
  perfect = {}
  for n in sorted({2, len(seeds), 4 * len(seeds)}):
    p = perfect_search_rate(true_spread, noise, len(within), n, _TOP.value, _DRAWS.value, rng)
    perfect[n] = p
    print(f"  a perfect search measured with {n} seeds: top {_TOP.value:g} % on one search seed "
          f"{p:.2f}, on all of 3 {p ** 3:.2f}")
  if _RANDOM_K.value:
    random_search = random_search_rate(true_spread, noise, len(within), _RANDOM_K.value,
                                       len(seeds), _TOP.value, _DRAWS.value, rng)
    print(f"  random search at equal cost (the best of {_RANDOM_K.value} within the budget, "
          f"each trained once), measured with {len(seeds)} seeds: top {_TOP.value:g} % "
          f"{random_search:.2f}")
  for path in _EVALUATIONS.value:  # measured with the table's seeds common to `within`
    with open(path) as f:
      report = json.load(f)
    if (report.get("budget_ms"), report.get("budget_seeds")) != (_BUDGET.value, len(seeds)):
      raise SystemExit(f"{path} compares within {report.get('budget_ms')} ms over "
                       f"{report.get('budget_seeds')} seeds; this run: {_BUDGET.value} ms, "
                       f"{len(seeds)} seeds")
    rates = {"a random pick": _TOP.value / 100, "perfect search": perfect[len(seeds)]}
    k = report.get("random_k") or _RANDOM_K.value  # the report's equal cost
    if k:
      rates["random search"] = random_search_rate(true_spread, noise, len(within), k,
                                                  len(seeds), _TOP.value, _DRAWS.value, rng)
    compare_evaluation(path, report, rates, _TOP.value)
    runs = report["runs"]
    found = [r["percentile_within_budget"] if r.get("meets_budget") else 0.0 for r in runs]
    if k:  # the same number of random searches on the table's own runs, averaged
      draws = random_search_percentiles(table, within, seeds, k, draws=len(found) * 20_000)
      averages = draws.reshape(-1, len(found)).mean(1)
      print(f"    mean percentile within the budget {np.mean(found):.1f} (a find over it "
            f"counts 0); {len(found)} random searches at the same cost (best validation "
            f"accuracy of K={k}, each trained once) average {draws.mean():.1f}, and reach "
            f"{np.mean(found):.1f} with probability {np.mean(averages >= np.mean(found)):.4f}")
    finds, meets = [x["arch"] for x in runs], [bool(x.get("meets_budget")) for x in runs]
    for r in [r for r in ["1"] + _BEST_OF.value if int(r) <= len(runs)]:
      p = best_of_searches_rate(finds, meets, table, seeds, within, means, int(r),
                                _TOP.value, 4000, rng)
      print(f"    DARTS's protocol over these searches, the best of {r} by one training's "
            f"validation accuracy: top {_TOP.value:g} % {p:.2f}")


if __name__ == "__main__":
  app.run(main)
