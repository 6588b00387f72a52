"""The ground truth's architecture-as-data network and its table (no test trains it: the
table is a committed result of experiments/nb201_digits/run.py)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from dnas.spaces import nb201
from dnas.spaces.nb201 import ground_truth as gt

MIXED = ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+"
         "|nor_conv_3x3~0|none~1|nor_conv_3x3~2|")


def test_one_hot_supernet_is_the_architectures_tiny_network():
  # With one-hot op weights the supernet (affine BN with running statistics, as the
  # ground truth trains it) computes the TinyNetwork of that architecture: copy the
  # chosen ops' weights into a TinyNetwork and compare outputs, training mode and eval.
  arch = nb201.Structure.from_string(MIXED)
  sup = nb201.Network(4, 1, 10, in_channels=1, affine=True, track_running_stats=True,
                      rngs=nnx.Rngs(1))
  tiny = nb201.TinyNetwork(arch, 4, 1, 10, in_channels=1, rngs=nnx.Rngs(2))
  sup_flat = dict(nnx.to_flat_state(nnx.state(sup)))
  tiny_state = nnx.state(tiny)
  for path, var in nnx.to_flat_state(tiny_state):
    if len(path) > 3 and path[0] == "cells" and path[2] == "layers":
      e = path[3]
      src = ("cells", path[1], "edges", e, "ops", nb201.NAS_BENCH_201.index(arch.ops[e]),
             *path[4:])
    else:
      src = path
    var.set_value(sup_flat[src].get_value())
  nnx.update(tiny, tiny_state)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  w = gt.one_hot([arch])[0]
  np.testing.assert_allclose(sup(x, weights=w), tiny(x), rtol=1e-5, atol=1e-5)
  sup.eval()
  tiny.eval()
  np.testing.assert_allclose(sup(x, weights=w), tiny(x), rtol=1e-5, atol=1e-5)


def test_one_hot_rows():
  w = gt.one_hot([MIXED, nb201.Structure.from_index(0)])
  assert w.shape == (2, 6, 5) and (w.sum(-1) == 1).all()
  assert [nb201.NAS_BENCH_201[k] for k in w[0].argmax(-1)] == list(
      nb201.Structure.from_string(MIXED).ops)
  assert (w[1].argmax(-1) == 0).all()  # index 0: every edge `none`


def test_table_lookup_percentile_noise_and_protocol(tmp_path):
  sample = [str(nb201.Structure.from_index(i)) for i in (5, 6, 7, 8)]
  table = gt.GroundTruth(sample=sample)
  accs = {sample[0]: (0.5, 0.7), sample[1]: (0.8, 0.8), sample[2]: (0.9, 0.7),
          sample[3]: (0.95, 0.95)}
  table.add(gt.Result(a, s, acc[s], acc[s], 0.1) for a, acc in accs.items() for s in (0, 1))
  table.add([gt.Result(MIXED, 0, 0.99, 0.99, 0.0)])  # a find: looked up, not in the sample
  path = str(tmp_path / "gt.json")
  table.save(path)
  table = gt.GroundTruth.load(path)
  assert table.accuracy(sample[0]) == pytest.approx(0.6)
  np.testing.assert_allclose(table.sample_accuracies(), [0.6, 0.8, 0.8, 0.95])
  assert table.percentile(0.8) == pytest.approx(100 * (1 + 0.5 * 2) / 4)
  assert table.percentile(table.accuracy(MIXED, [0])) == 100.0
  d = np.array([-0.2, 0.0, 0.2, 0.0])
  assert table.seed_noise() == pytest.approx(np.std(d) / np.sqrt(2))
  assert table.has(sample[0], [0, 1]) and not table.has(sample[0], [0, 2])
  # A closer look at one architecture (seed 2) changes none of the sample's numbers: they
  # average the seeds every sampled architecture has.
  calls = []

  def fake_train(key, w):
    calls.append(np.asarray(w))
    return 0.8, 0.8, 0.1
  assert table.ensure([sample[0], MIXED], [1, 2], fake_train) == 3
  assert table.ensure([sample[0], MIXED], [1, 2], fake_train) == 0 and len(calls) == 3
  np.testing.assert_array_equal(calls[0], gt.one_hot([sample[0]])[0])
  assert table.base_seeds == (0, 1) and table.accuracy(sample[0]) == pytest.approx(0.6)
  assert table.accuracy(sample[0], [0, 1, 2]) == pytest.approx((0.5 + 0.7 + 0.8) / 3)
  assert table.accuracy(MIXED) == pytest.approx((0.99 + 0.8) / 2)
  np.testing.assert_allclose(table.sample_accuracies(), [0.6, 0.8, 0.8, 0.95])
  assert table.seed_noise() == pytest.approx(np.std(d) / np.sqrt(2))
  with pytest.raises(KeyError):
    table.accuracy(sample[1], [2])
  with pytest.raises(ValueError, match="no seeds"):
    table.accuracy(sample[1], [])
  # More than two seeds: the pooled std about each architecture's own mean.
  three = np.asarray([0.5, 0.7, 0.8])
  assert table.seed_noise([sample[0]], [0, 1, 2]) == pytest.approx(np.std(three, ddof=1))
  assert np.isnan(table.seed_noise([], [0, 1]))
  # Saving takes in what another process saved meanwhile (results only grow); ensure()
  # saves after each pair it trains.
  other = gt.GroundTruth.load(path)
  other.add([gt.Result(sample[3], 7, 0.5, 0.5, 0.1)])
  other.save(path)
  table.ensure([sample[2]], [3], fake_train, path=path)
  merged = gt.GroundTruth.load(path)
  assert merged.has(sample[3], [0, 1, 7]) and merged.has(sample[2], [0, 1, 3])
  assert merged.has(sample[0], [0, 1, 2]) and table.has(sample[3], [7])
  with open(path) as f:
    d = json.load(f)
  d["protocol"]["epochs"] += 1
  with open(path, "w") as f:
    json.dump(d, f)
  with pytest.raises(ValueError, match="trained under protocol"):
    gt.GroundTruth.load(path)
