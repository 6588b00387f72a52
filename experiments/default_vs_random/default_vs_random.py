"""Does a search beat chance on the DARTS space? Its found cells against random cells,
every cell retrained by the same `dnas.train` (the test of the digits default):

python experiments/default_vs_random/default_vs_random.py --workdir=runs/vs_random  # the default
python experiments/default_vs_random/default_vs_random.py --workdir=runs/vs_random_drnas \
    --random_dir=runs/vs_random --search_args=--config.method=drnas

Searches with seeds 0..S-1 (`python -m dnas.search`, each resumable in
workdir/search_<s>), retrains each find with R seeds, draws N random cells of the
config's space (seeded; `space.random_arch`) and retrains each with the same R seeds.
Reports the finds' mean +- std over all their retrainings, the random cells' median,
spread and best (each cell its seed mean), the retraining seed noise (std between two
seeds of one cell, pooled), and whether the finds' mean reaches the random median by more
than that noise. Everything after `--` goes to both commands (config overrides; the random
cells are drawn from the config file's own `model.primitives`); `--search_args` to the
searches only, so that searches of several methods can share one set of random cells
(`--random_dir`). Each command's output is kept beside its results; a rerun skips what is
done, and instances started together share the work (lock files).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("workdir", None, "Output directory.", required=True)
flags.DEFINE_string("config", "dnas/configs/digits.py", "The config of search and retraining.")
flags.DEFINE_integer("search_seeds", 3, "Search seeds 0..S-1.")
flags.DEFINE_integer("retrain_seeds", 2, "Retraining seeds 0..R-1 of every cell.")
flags.DEFINE_integer("random_cells", 10, "Random cells, retrained like the finds.")
flags.DEFINE_string("random_dir", None, "Where the random cells live (default: workdir); "
                    "share it between runs whose retraining is the same.")
flags.DEFINE_multi_string("search_args", [], "Arguments for the searches only.")
FLAGS = flags.FLAGS


def _run(args, log) -> float:
  """Runs `python -m args` once (a rerun skips it); returns its wall time in seconds."""
  if not os.path.exists(log):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
      with open(log + ".failed", "w") as f:
        f.write(out.stdout + out.stderr)
      if os.path.exists(os.path.join(os.path.dirname(log), "lock")):  # free it for a rerun
        os.remove(os.path.join(os.path.dirname(log), "lock"))
      raise SystemExit(f"{' '.join(args)} failed (exit {out.returncode}); see {log}.failed")
    with open(log, "w") as f:
      f.write(out.stdout + out.stderr + f"\nwall {seconds:.1f} s\n")
  with open(log) as f:
    last = f.read().rstrip().splitlines()[-1]
  return float(last.split()[1]) if last.startswith("wall ") else float("nan")


def _claim(work: str, done: str, wait: bool) -> bool | None:
  """True: this instance runs the job of `work` (it took the lock); False: it is done,
  or another instance finished it while this one waited; None: another instance holds it
  and `wait` is False. Several instances of this script share searches and retrainings."""
  os.makedirs(work, exist_ok=True)
  if os.path.exists(done):
    return False
  try:
    os.close(os.open(os.path.join(work, "lock"), os.O_CREAT | os.O_EXCL))
    return True
  except FileExistsError:
    if not wait:
      return None
    while not os.path.exists(done):
      time.sleep(10)
    return False


def search(directory: str, seed: int, overrides, wait: bool = True):
  """The wall time of the search of `seed` (run here unless another instance holds it;
  None when held and `wait` is False)."""
  log = os.path.join(directory, "log.txt")
  claimed = _claim(directory, log, wait)
  if claimed is None:
    return None
  if claimed:
    _run(["dnas.search", f"--config={FLAGS.config}", *overrides, *FLAGS.search_args,
          f"--config.seed={seed}", f"--workdir={directory}", "--progress=false"], log)
  return _run([], log)


def retrain(genotype: str, directory: str, seed: int, overrides, wait: bool = True):
  """The test accuracy of one retraining, run here unless another instance of this
  script holds its lock; None when it is held and `wait` is False."""
  work = os.path.join(directory, f"train_{seed}")
  result = os.path.join(work, "train_result.json")
  claimed = _claim(work, result, wait)
  if claimed is None:
    return None
  if claimed:
    _run(["dnas.train", f"--config={FLAGS.config}", *overrides, f"--genotype={genotype}",
          f"--config.seed={seed}", f"--workdir={work}", "--progress=false"],
         os.path.join(work, "log.txt"))
  with open(result) as f:
    return float(json.load(f)["test_acc"])


def _metrics(space, arch, model) -> dict:
  return space.arch_metrics(arch, model) if hasattr(space, "arch_metrics") else {}


def main(argv):
  overrides = argv[1:]
  import importlib.util  # pylint: disable=g-import-not-at-top
  from dnas import config as config_lib, spaces  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cfg", FLAGS.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  space, model = spaces.get(config.space), config_lib.space_section(config)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  finds, found_cells = [], []
  searches = [os.path.join(FLAGS.workdir, f"search_{s}") for s in range(FLAGS.search_seeds)]
  for s, d in enumerate(searches):  # first the searches no other instance holds
    search(d, s, overrides, wait=False)
  for s, d in enumerate(searches):
    seconds = search(d, s, overrides)
    path = os.path.join(d, "genotype.json")
    accs = [retrain(path, d, r, overrides) for r in range(FLAGS.retrain_seeds)]
    finds += accs
    arch = spaces.load(space, path)
    found_cells.append(dict(seed=s, test_acc=accs, search_s=seconds,
                            arch=space.to_dict(arch), **_metrics(space, arch, model)))
    print(f"search {s} ({seconds:.0f} s): retrained {', '.join(f'{100 * a:.2f}' for a in accs)} %"
          f" {_metrics(space, arch, model)}", flush=True)
  rng = np.random.default_rng(1000)
  randoms, random_cells, cells = [], [], []
  for i in range(FLAGS.random_cells):
    d = os.path.join(FLAGS.random_dir or FLAGS.workdir, f"random_{i}")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "genotype.json")
    # Drawn every time: the sequence stays seeded.
    arch = space.random_arch(rng, model, None)
    if not os.path.exists(path):
      spaces.save(space, arch, path)
    cells.append((i, d, path, arch))
  for _, d, path, _ in cells:  # first what no other instance holds, then wait for the rest
    for r in range(FLAGS.retrain_seeds):
      retrain(path, d, r, overrides, wait=False)
  for i, d, path, arch in cells:
    accs = [retrain(path, d, r, overrides) for r in range(FLAGS.retrain_seeds)]
    randoms.append(accs)
    random_cells.append(dict(test_acc=accs, arch=space.to_dict(arch),
                             **_metrics(space, arch, model)))
    print(f"random {i}: retrained {', '.join(f'{100 * a:.2f}' for a in accs)} %"
          f" {_metrics(space, arch, model)}", flush=True)
  if not randoms:  # searches only (--random_cells=0; a rerun with them adds the comparison)
    print(f"finds {100 * np.mean(finds):.2f} +- {100 * np.std(finds):.2f} % "
          f"({len(finds)} retrainings)")
    return
  cell_means = np.mean(randoms, axis=1)
  noise = float(np.sqrt(np.mean(np.var(np.asarray(randoms + [c["test_acc"] for c in found_cells]),
                                       axis=1, ddof=1)))) if FLAGS.retrain_seeds > 1 else 0.0
  report = dict(
      overrides=overrides, search_args=FLAGS.search_args, config=FLAGS.config,
      finds=found_cells,
      found_mean=float(np.mean(finds)), found_std=float(np.std(finds)),
      random=random_cells, random_median=float(np.median(cell_means)),
      random_best=float(cell_means.max()), random_worst=float(cell_means.min()),
      retrain_seed_noise=noise)
  margin = report["found_mean"] - report["random_median"]
  report["verdict"] = ("beats the random median by more than the seed noise" if margin > noise
                       else "reaches the random median within the seed noise" if margin >= 0
                       else "below the random median")
  with open(os.path.join(FLAGS.workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"finds {100 * report['found_mean']:.2f} +- {100 * report['found_std']:.2f} % "
        f"({len(finds)} retrainings); random cells median {100 * report['random_median']:.2f} %, "
        f"range {100 * report['random_worst']:.2f}-{100 * report['random_best']:.2f} %; "
        f"seed noise {100 * noise:.2f} %: {report['verdict']}")


if __name__ == "__main__":
  app.run(main)
