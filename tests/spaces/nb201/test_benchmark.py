"""NAS-Bench-201's own table, read through the official API from a fixture file."""

import pytest

from dnas.spaces import nb201
from dnas.spaces.base import ArchError
from dnas.spaces.nb201.benchmark import Benchmark
from tests.spaces.nb201 import nats_fixture

ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
         "nor_conv_1x1~2|",
         "|none~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"]


def test_query_reads_the_200_epoch_results_averaged_over_seeds(tmp_path):
  path = nats_fixture.write(str(tmp_path / "tss"), ARCHS)
  bench = Benchmark(path)
  for index, arch in enumerate(ARCHS):
    got = bench.query(nb201.Structure.from_string(arch))
    assert set(got) == {"cifar10", "cifar100", "ImageNet16-120"}
    for dataset, acc in got.items():
      want = sum(nats_fixture.accuracy(index, dataset, "200", s)
                 for s in nats_fixture.SEEDS) / 2
      assert acc == pytest.approx(want)  # never the API's default 12-epoch results
      assert acc != pytest.approx(sum(nats_fixture.accuracy(index, dataset, "12", s)
                                      for s in nats_fixture.SEEDS) / 2)


def test_missing_architecture_and_file_are_clear_errors(tmp_path):
  bench = Benchmark(nats_fixture.write(str(tmp_path / "tss"), ARCHS[:1]))
  with pytest.raises(ArchError, match="is not in the benchmark"):
    bench.query(nb201.Structure.from_string(ARCHS[1]))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Benchmark(str(tmp_path / "missing.pickle.pbz2"))
