"""A small NATS-Bench topology file in the package's own format, written with the
`nats_bench` package's classes (`ArchResults`, `ResultsCount`, `pickle_save`): per
architecture, the 12- and 200-epoch results of two seeds on CIFAR-10, CIFAR-100 and
ImageNet16-120, each result holding its last epoch (what `get_more_info` reads)."""

from nats_bench.api_utils import ArchResults, ResultsCount, pickle_save

SEEDS = (777, 888)
EVAL_SET = {"cifar10": "ori-test", "cifar100": "x-test", "ImageNet16-120": "x-test"}


def accuracy(index: int, dataset: str, hp: str, seed: int) -> float:
  """The fixture's test accuracy (%): distinct per architecture, data set, hp and seed."""
  base = {"cifar10": 60.0, "cifar100": 30.0, "ImageNet16-120": 10.0}[dataset]
  return base + (index % 97) * 0.25 + (10.0 if hp == "200" else 0.0) + (seed - 777) / 111.0


def write(path_stem: str, archs) -> str:
  """Writes `path_stem`.pickle.pbz2 for architecture strings `archs`; returns its path."""
  arch2infos = {}
  for index, arch in enumerate(archs):
    per_hp = {}
    for hp, epochs in (("12", 12), ("200", 200)):
      result = ArchResults(index, arch)
      for dataset, eval_set in EVAL_SET.items():
        for seed in SEEDS:
          last = epochs - 1
          acc = accuracy(index, dataset, hp, seed)
          r = ResultsCount(dataset, None, {last: acc + 5.0}, {last: 0.1}, 0.1, 10.0, None,
                           seed, epochs, None)
          r.eval_names = [eval_set]
          r.eval_acc1es = {f"{eval_set}@{last}": acc}
          r.eval_losses = {f"{eval_set}@{last}": 1.0}
          result.update(dataset, seed, r)
      per_hp[hp] = result.state_dict()
    arch2infos[index] = per_hp
  pickle_save(dict(meta_archs=list(archs), arch2infos=arch2infos,
                   evaluated_indexes=list(range(len(archs)))), path_stem + ".pickle")
  return path_stem + ".pickle.pbz2"
