"""How finely the NAS-Bench-201 digits ground truth ranks architectures: the numbers
behind "top 5 % of the sample" and "top 10 % of the sample within a latency budget".

python scripts/ground_truth_resolution.py \
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

python scripts/ground_truth_resolution.py --supernet=runs/hess_beta_darts \
    --measured_latency=../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json --budget_ms=3
"""

import json

import numpy as np
from absl import app, flags
from scipy import stats

from dnas.evaluate_lib import DEFAULT_TABLE, supernet_ranking, within_budget
from dnas.spaces.nb201 import ground_truth as gt

_TABLE = flags.DEFINE_string("ground_truth", DEFAULT_TABLE, "The ground-truth table.")
_MEASURED = flags.DEFINE_string("measured_latency", None, "JSON {'latency_ms': {arch: ms}}.")
_BUDGET = flags.DEFINE_float("budget_ms", 3.0, "The latency budget.")
_TOP = flags.DEFINE_float("top", 10.0, "The within-budget bar: top this many percent.")
_DRAWS = flags.DEFINE_integer("draws", 20_000, "Simulated re-measurements.")
_SUPERNET = flags.DEFINE_string("supernet", None, "A full-space nb201 search's workdir.")


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
  for n in sorted({2, len(seeds), 4 * len(seeds)}):
    p = perfect_search_rate(true_spread, noise, len(within), n, _TOP.value, _DRAWS.value, rng)
    print(f"  a perfect search measured with {n} seeds: top {_TOP.value:g} % on one search seed "
          f"{p:.2f}, on all of 3 {p ** 3:.2f}")


if __name__ == "__main__":
  app.run(main)
