"""Measures a search method against chance on the NAS-Bench-201 digits ground truth.

python -m dnas.evaluate --config=dnas/configs/nb201.py --workdir=runs/eval_darts1
python -m dnas.evaluate --config=dnas/configs/nb201.py --config.search.order=second \
    --workdir=runs/eval_darts2 --seeds=3
python -m dnas.evaluate --config=dnas/configs/nb201.py --config.search.relaxation=gumbel \
    --config.search.gumbel_hard=true --workdir=runs/eval_gdas

Runs the search of `--config` with seeds 0..S-1 (each in `workdir/seed_<s>`, resumed
when rerun), looks each found architecture up in the ground truth
(`dnas/benchmarks/nb201_digits/ground_truth.json`, shipped with dnas; a missing one is
trained under the table's protocol and added to the table), and reports, as
`workdir/evaluation.json` and a table:
- each find's test accuracy (mean over the table's seeds), its percentile in the uniform
  sample, and its parameter-free ops;
- mean +- std over the search seeds;
- the expected accuracy of the best of K random architectures, K the number that
  training under the protocol fits in the search's mean wall time (its `wall_time`,
  compile included, plus the selection's time from `selection.json`; the expectation over the sample's distribution, exact; it picks by
  the ground truth's seed mean, so it flatters random search a little);
- with `--measured_latency` (and `--budget_ms`, `--budget_seeds`): each find's measured
  latency against the budget and its percentile among the sampled architectures within
  it;
- Kendall's tau between the final supernet's ranking of the sampled architectures (its
  accuracy on the search's architecture split with each one's one-hot op weights: the
  weight-sharing proxy; BatchNorm on batch statistics when the search selects with
  `search.selection=supernet`, as that selection scores) and the ground truth's.
"""

import json
import os
import time

from absl import flags

from dnas import cli
from dnas.config import ConfigError
from dnas.benchmarks.nb201_digits import DEFAULT_TABLE, evaluate_method, format_report

_CONFIG = cli.define_config_flag(
    os.path.join(os.path.dirname(__file__), "configs", "nb201.py"), "Search config (nb201).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/eval-<time>).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Search seeds 0..S-1.")
_TABLE = flags.DEFINE_string("ground_truth", DEFAULT_TABLE, "The ground-truth table.")
_MEASURED = flags.DEFINE_string(
    "measured_latency", "", "JSON {'latency_ms': {arch: ms}} measured on the latency table's "
    "device (e.g. EAGLE's): report each find's latency against the budget.")
_BUDGET = flags.DEFINE_float(
    "budget_ms", None, "The latency budget the finds are held to (default: "
    "latency.target_ms; a search may target less, to absorb the table's error).")
_BUDGET_SEEDS = flags.DEFINE_integer(
    "budget_seeds", None, "Training seeds 0..N-1 that the within-budget comparison averages "
    "(default: the table's own two); missing ones are trained into the table.")
_TRAIN_SECONDS = flags.DEFINE_float(
    "train_seconds", None, "Seconds to train one architecture under the protocol (default: "
    "timed here once).")


def main(argv):
  del argv
  if _SEEDS.value < 1:
    raise ConfigError(f"--seeds must be >= 1, got {_SEEDS.value}")
  workdir = _WORKDIR.value or os.path.join("runs", time.strftime("eval-%Y%m%d-%H%M%S"))
  measured = None
  if _MEASURED.value:
    try:
      with open(_MEASURED.value) as f:
        measured = json.load(f)["latency_ms"]
    except (OSError, ValueError, KeyError) as e:
      raise ConfigError(f"cannot read --measured_latency {_MEASURED.value}: {e}") from e
  if _BUDGET.value is not None and (_BUDGET.value <= 0 or not measured):
    raise ConfigError(f"--budget_ms must be > 0 and come with --measured_latency, got "
                      f"{_BUDGET.value}")
  if _BUDGET_SEEDS.value is not None and (_BUDGET_SEEDS.value < 2 or not measured):
    raise ConfigError(f"--budget_seeds must be >= 2 and come with --measured_latency, got "
                      f"{_BUDGET_SEEDS.value}")
  report = evaluate_method(_CONFIG.value, workdir, range(_SEEDS.value), _TABLE.value,
                           _TRAIN_SECONDS.value, measured_latency=measured,
                           budget_ms=_BUDGET.value, budget_seeds=_BUDGET_SEEDS.value)
  print(format_report(report))
  print(f"wrote {os.path.join(workdir, 'evaluation.json')}")


if __name__ == "__main__":
  cli.run(main)
