"""NAS-Bench-201's own tables, for users who have them: the accuracy of an architecture
trained for 200 epochs, read through the official `nats_bench` API (an optional extra:
`pip install 'dnas[nats]'`) from the NATS-Bench topology file (`NATS-tss-v1_0-3ffb9-full`
or the `-simple` directory).

The results are the 200-epoch ones (`hp="200"`), averaged over the benchmark's seeds. The
API's default, `hp="12"`, is the 12-epoch schedule of NATS-Bench's own search experiments:
its accuracies are far lower and rank differently, a documented pitfall.
"""

import os

from dnas.spaces.base import ArchError

# (dataset, the evaluation set NAS-Bench-201's paper reports as its test accuracy).
DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
HP = "200"


class Benchmark:
  """The topology benchmark at `path` (a `.pickle.pbz2` file, or the fast-mode archive
  directory). `query(arch)` -> {"cifar10": %, "cifar100": %, "ImageNet16-120": %}: the
  test accuracy after 200 epochs, the seeds' mean."""

  def __init__(self, path: str):
    try:
      import nats_bench  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("nb201.benchmark needs the nats_bench package: pip install "
                        "'dnas[nats]'") from e
    if not os.path.exists(path):
      raise FileNotFoundError(f"nb201.benchmark: {path} does not exist")
    self.api = nats_bench.create(path, "tss", fast_mode=os.path.isdir(path), verbose=False)

  def query(self, arch) -> dict[str, float]:
    index = self.api.query_index_by_arch(str(arch))
    if index < 0:
      raise ArchError(f"{arch} is not in the benchmark at hand")
    return {d: float(self.api.get_more_info(index, d, hp=HP, is_random=False)["test-accuracy"])
            for d in DATASETS}
