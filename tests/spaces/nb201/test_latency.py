"""NAS-Bench-201's latency cell model: active edges, the fit on measured networks (a
slice of the EAGLE data), and its exact expected latency."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dnas.latency import LatencyTable
from dnas.spaces import nb201
from dnas.spaces.nb201 import latency

SLICE = os.path.join(os.path.dirname(__file__), "..", "..", "data",
                     "eagle_nb201_i7-7820x_slice.json")
META = dict(backend="cpu", device_kind="Intel Core i7-7820X", cpu_model="Intel Core i7-7820X",
            cpu_count=8, batch_size=1, dtype="float32", unit="ms", dispatch_ms=0.0)


def S(text):
  return nb201.Structure.from_string(text)


@pytest.mark.parametrize("arch,want", [
    # node 1 gets nothing (its only input is none), node 2 feeds nothing (3<-2 is none):
    # only 3<-0 is on a path
    ("|none~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|",
     [False, False, False, True, False, False]),
    # node 2 feeds nothing: the edges into it are dead code
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
     [True, False, False, True, True, False]),
    ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",
     [True, False, True, False, False, True]),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", [False] * 6),
])
def test_active_edges(arch, want):
  assert latency.active_edges(S(arch).ops) == want


@pytest.fixture(scope="module")
def fitted():
  with open(SLICE) as f:
    data = json.load(f)["latency_ms"]
  keys = sorted(data)
  np.random.default_rng(0).shuffle(keys)
  train, test = keys[:400], keys[400:]
  return latency.fit({k: data[k] for k in train}, meta=META), {k: data[k] for k in test}


def test_fit_predicts_unseen_networks_of_the_device(fitted):
  # 400 networks of the slice fit, 200 held out (the full data's figures: BUILD_NOTES.md).
  table, test = fitted
  model = latency.CellLatency(table)
  pred = np.asarray([model.predict(S(k)) for k in test])
  true = np.asarray(list(test.values()))
  err = np.abs(pred - true) / true
  assert stats.spearmanr(pred, true).statistic > 0.95
  assert np.mean(err <= 0.1) > 0.7 and np.mean(err) < 0.1
  # Dead edges cost nothing: an architecture and its copy with a dead edge changed.
  a = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"
  b = "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|"
  assert model.predict(S(a)) == model.predict(S(b))


def test_table_round_trip_keeps_signed_coefficients(fitted, tmp_path):
  table, _ = fitted
  assert any(e["median"] < 0 for e in table.entries.values())  # interaction terms
  table.save(tmp_path / "t.json")
  assert LatencyTable.load(tmp_path / "t.json") == table
  np.testing.assert_array_equal(latency.coefficients(table),
                                latency.coefficients(LatencyTable.load(tmp_path / "t.json")))


def test_expected_latency_is_the_exact_expectation(fitted):
  table, _ = fitted
  ops = ("none", "skip_connect", "nor_conv_3x3")
  model = latency.CellLatency(table, ops)
  logits = jax.random.normal(jax.random.key(0), (6, 3))
  p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  want = sum(np.prod([p[e, k] for e, k in enumerate(c)]) *
             model.predict(nb201.Structure(tuple(ops[k] for k in c)))
             for c in itertools.product(range(3), repeat=6))
  assert float(model.expected(logits)) == pytest.approx(want, rel=1e-5)
  # Differentiable; and near-one-hot logits give the architecture's own prediction.
  g = jax.grad(lambda a: model.expected(a))(logits)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  sharp = 50.0 * jnp.asarray(np.eye(3)[[2, 0, 2, 1, 2, 0]])
  arch = nb201.Structure(tuple(ops[k] for k in (2, 0, 2, 1, 2, 0)))
  assert float(model.expected(sharp)) == pytest.approx(model.predict(arch), rel=1e-4)
  assert model.minimum() <= min(model.predict(nb201.Structure(tuple(ops[k] for k in c)))
                                for c in [(0,) * 6, (1,) * 6, (2,) * 6])


def test_derived_latency_is_the_argmax_with_single_edge_gradients(fitted):
  table, _ = fitted
  ops = ("none", "skip_connect", "nor_conv_3x3")
  model = latency.CellLatency(table, ops)
  logits = jax.random.normal(jax.random.key(1), (6, 3))
  best = np.asarray(jnp.argmax(logits, -1))

  def lat(choice):
    return model.predict(nb201.Structure(tuple(ops[k] for k in choice)))

  assert float(model.derived(logits)) == pytest.approx(lat(best), rel=1e-5)
  # d/dp[e, k]: the argmax with edge e set to op k; chained through the softmax.
  p = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  dp = np.asarray([[lat(np.where(np.arange(6) == e, k, best)) for k in range(3)]
                   for e in range(6)])
  want = p * (dp - np.sum(p * dp, -1, keepdims=True))
  got = jax.grad(model.derived)(logits)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_profile_here_then_predict_and_measure(tmp_path):
  """`dnas.latency profile` on nb201 times random TinyNetworks here and fits the cell model;
  `predict --measure` reads it back for an architecture and times that network."""
  from tests import cli_helpers  # pylint: disable=g-import-not-at-top
  config = os.path.join(cli_helpers.ROOT, "dnas", "configs", "nb201.py")
  small = ["--config.train.C=4", "--config.train.N=1", "--config.latency.batch_size=32",
           "--config.latency.repeats=2"]
  table = tmp_path / "table.json"
  out = cli_helpers.run("dnas.latency", "profile", f"--config={config}", *small,
                        "--config.nb201.latency_networks=6", f"--out={table}")
  assert out.returncode == 0, out.stderr[-3000:]
  t = LatencyTable.load(table)
  assert t.meta["model"] == "nb201-cell-pairs/1" and t.meta["networks"] == 6
  assert t.meta["batch_size"] == 32 and t.meta["cpu_count"] == os.cpu_count()
  assert len([line for line in out.stdout.splitlines() if line.startswith("[")]) == 6
  arch = tmp_path / "arch.json"
  arch.write_text(json.dumps({"arch": "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+"
                                      "|skip_connect~0|none~1|avg_pool_3x3~2|"}))
  out = cli_helpers.run("dnas.latency", "predict", f"--config={config}", *small,
                        f"--table={table}", f"--genotype={arch}", "--measure")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  # six networks cannot fit ~70 terms well: only that the prediction is a number
  assert np.isfinite(result["predicted_ms"]) and result["measured_ms"] > 0
  # Calibrated on three of the six networks the table was fitted to (the profile draws
  # with config.seed 0), timed over five rounds: the table's sums follow their measured
  # times, where three fresh networks under a six-network fit need not (they fail now and
  # then on a busy machine).
  out = cli_helpers.run("dnas.latency", "calibrate", f"--config={config}", *small,
                        f"--table={table}", "--networks=3", "--rounds=5", "--seed=0")
  assert out.returncode == 0, out.stderr[-3000:]
  correction = LatencyTable.load(table).meta["correction"]
  assert correction["networks"] == 3 and correction["space"] == "nb201"
  assert (correction["network"], correction["C"], correction["N"]) == ("tiny", 4, 1)
