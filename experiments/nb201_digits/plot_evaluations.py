"""Plots `dnas.evaluate` reports against the ground truth: the sample's accuracy
distribution, each method's finds (one marker per search seed), the expected best of K
random architectures at each method's wall time.

python experiments/nb201_digits/plot_evaluations.py --out=experiments/nb201_digits/evaluation.png \
    DARTS-1st=runs/eval_darts1/evaluation.json GDAS=runs/eval_gdas/evaluation.json ...
"""

import argparse
import json

import numpy as np

from dnas.benchmarks.nb201_digits import DEFAULT_TABLE
from dnas.plotting import pyplot
from dnas.spaces.nb201 import ground_truth as gt


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("reports", nargs="+", help="NAME=path/to/evaluation.json")
  p.add_argument("--ground_truth", default=DEFAULT_TABLE)
  p.add_argument("--out", required=True)
  a = p.parse_args()
  table = gt.GroundTruth.load(a.ground_truth)
  truth = 100 * np.sort(table.sample_accuracies())
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(a.reports)))
  ranks = 100 * (np.arange(1, len(truth) + 1) - 0.5) / len(truth)
  ax.plot(truth, ranks, color="0.6", lw=1.5,
          label=f"uniform sample ({len(truth)} architectures): percentile")
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, item in enumerate(a.reports):
    name, path = item.split("=", 1)
    with open(path) as f:
      r = json.load(f)
    c = colors[i % len(colors)]
    accs = [100 * run["test_acc"] for run in r["runs"]]
    ax.scatter(accs, [run["percentile"] for run in r["runs"]], color=c, zorder=3,
               label=f"{name}: {np.mean(accs):.2f} +- {np.std(accs):.2f} % "
                     f"(tau {r['kendall_tau_mean']:.2f})")
    ax.axvline(100 * r["random_best_of_k"], color=c, ls=":", lw=1)
  ax.set_xlabel("test accuracy (%, 2-seed mean); dotted: best of K random at equal time")
  ax.set_ylabel("percentile in the sample")
  ax.set_xlim(max(truth.min(), np.percentile(truth, 5) - 5), truth.max() + 0.5)
  ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(a.out, dpi=120)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
