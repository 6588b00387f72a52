"""A probe: choose within a latency budget by the supernet's ranking (the constrained
selection of single-path one-shot NAS, Guo et al., ECCV 2020, exact here because
NAS-Bench-201's 15,625 cells can be enumerated), instead of a latency penalty during the
search.

python experiments/nb201_digits/budget_selection_probe.py --target_ms=2.8 --budget_ms=3 \
    --budget_seeds=24 runs/hess_beta_darts runs/probe_beta_s1 runs/probe_beta_s2

For each full-space nb201 digits search given: every cell whose predicted latency on the
table's device is at most `--target_ms`, ranked by the trained supernet's accuracy on its
search's architecture split (`dnas.evaluate`'s proxy); the best one's measured latency
(EAGLE's data) and its percentile among the sampled networks within `--budget_ms`, both
over training seeds 0..`--budget_seeds`-1 (trained into the ground truth when missing).
Not a dnas feature yet: a measurement of whether it would be one.
"""

import json

import numpy as np
from absl import app, flags

from dnas.benchmarks.nb201_digits import DEFAULT_TABLE, supernet_ranking, within_budget
from dnas.latency.table import LatencyTable
from dnas.spaces.nb201 import NAS_BENCH_201
from dnas.spaces.nb201 import ground_truth as gt
from dnas.spaces.nb201.latency import CellLatency
from dnas.spaces.nb201.structure import Structure

_TABLE = flags.DEFINE_string("latency_table",
                             "experiments/nb201_eagle/latency_table_i7-7820x.json",
                             "The cell-model latency table of the target device.")
_MEASURED = flags.DEFINE_string("measured_latency",
                                "../shared/data/eagle_nb201_desktop_cpu_i7-7820x.json",
                                "JSON {'latency_ms': {arch: ms}} measured on that device.")
_TARGET = flags.DEFINE_float("target_ms", 2.8, "Predicted latency a candidate may have.")
_BUDGET = flags.DEFINE_float("budget_ms", 3.0, "Measured latency the pick is held to.")
_SEEDS = flags.DEFINE_integer("budget_seeds", 24, "Training seeds of the comparison.")


def main(argv):
  model = CellLatency(LatencyTable.load(_TABLE.value), NAS_BENCH_201)
  every = [Structure.from_index(i) for i in range(len(NAS_BENCH_201) ** 6)]
  candidates = [str(s) for s in every if model.predict(s) <= _TARGET.value]
  with open(_MEASURED.value) as f:
    measured = json.load(f)["latency_ms"]
  table = gt.GroundTruth.load(DEFAULT_TABLE)
  seeds = tuple(range(_SEEDS.value))
  within = within_budget([a for a in table.sample if a in table.results], measured,
                         _BUDGET.value)
  table.ensure(within, seeds, path=DEFAULT_TABLE)
  truth = [table.accuracy(a, seeds) for a in within]
  print(f"{len(candidates)} cells predicted within {_TARGET.value} ms; {len(within)} sampled "
        f"networks measured within {_BUDGET.value} ms")
  for workdir in argv[1:]:
    proxy = supernet_ranking(workdir, candidates)
    pick = candidates[int(np.argmax(proxy))]
    table.ensure([pick], seeds, path=DEFAULT_TABLE)
    acc = table.accuracy(pick, seeds)
    ms = measured.get(pick)
    pct = gt.percentile_of(truth, acc) if ms is not None and ms <= _BUDGET.value else None
    print(f"{workdir}: {pick} supernet acc {proxy.max():.4f}; measured {ms} ms; test acc "
          f"{100 * acc:.2f} % over {len(seeds)} seeds; percentile within the budget {pct}")


if __name__ == "__main__":
  app.run(main)
