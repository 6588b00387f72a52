"""Latency tables and the latency-aware objective: round trip, refusal of a foreign table,
the expected latency against a hand-computed sum and finite differences, and a search
that a large latency weight pushes towards cheap ops."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import bilevel, latency as latency_lib
from dnas.spaces import darts
from dnas.spaces.darts import latency as darts_latency

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
G2 = darts.Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2),
                            ("sep_conv_3x3", 0)], normal_concat=[2, 3],
                    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                            ("max_pool_3x3", 1)], reduce_concat=[2, 3])
# Traced from the final network itself.
LAYOUT = darts_latency.trace_layout(nnx.eval_shape(lambda: darts.NetworkCIFAR(
    G2, 4, 10, 3, in_channels=1, rngs=nnx.Rngs(0))), (8, 8, 1))


def _expected(expected, a_n, a_r, b_n=None, b_r=None):
  alphas = dict(alphas_normal=a_n, alphas_reduce=a_r)
  if b_n is not None:
    alphas.update(betas_normal=b_n, betas_reduce=b_r)
  return expected(alphas)


def _synthetic_table(rng, cost=None):
  """A table over LAYOUT's keys with random (or `cost(op name)`) latencies."""
  keys = darts_latency.table_keys(LAYOUT, OPS)
  entries = {k: {"median": float(cost(k.split("|")[0]) if cost else rng.uniform(0.05, 1.0))}
             for k in keys}
  meta = dict(latency_lib.device_stamp(), batch_size=8, dtype="float32", unit="ms",
              dispatch_ms=0.01, network="cifar", image=[8, 8, 1])
  return latency_lib.LatencyTable(meta, entries)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
  table = darts_latency.profile(LAYOUT, OPS, batch_size=8, repeats=3)
  path = tmp_path_factory.mktemp("lat") / "table.json"
  table.save(path)
  return table, path


def test_layout_matches_the_final_network():
  net = nnx.eval_shape(lambda: darts.NetworkCIFAR(G2, 4, 10, 3, in_channels=1,
                                                  rngs=nnx.Rngs(0)))
  assert LAYOUT.head_C == net.classifier.in_features
  for shape, cell in zip(LAYOUT.cells, net.cells):
    assert shape.reduction == cell.reduction
    assert shape.C == cell.preprocess1.bn.mean.get_value().shape[0]
  assert [c.hw1 for c in LAYOUT.cells] == [(8, 8), (8, 8), (4, 4)]
  assert [c.hw_out for c in LAYOUT.cells] == [(8, 8), (4, 4), (2, 2)]
  assert LAYOUT.head_hw == (2, 2) and LAYOUT.stem_out == 12 and LAYOUT.num_classes == 10
  assert (LAYOUT.C, LAYOUT.steps, LAYOUT.multiplier) == (4, 2, 2)


def test_layout_has_every_cell_of_a_network_with_scanned_cells():
  # 20 cells, 14 of them in three scans: the trace records each cell's call.
  net = nnx.eval_shape(lambda: darts.NetworkCIFAR(G2, 4, 10, 20, in_channels=1,
                                                  rngs=nnx.Rngs(0)))
  layout = darts_latency.trace_layout(net, (8, 8, 1))
  assert len(layout.cells) == 20
  assert [c.reduction for c in layout.cells] == [c.reduction for c in net.cells]


def test_profiled_table_round_trip_and_refusals(measured, tmp_path):
  table, path = measured
  loaded = latency_lib.LatencyTable.load(path)
  assert loaded == table
  assert set(table.entries) == set(darts_latency.table_keys(LAYOUT, OPS))
  assert all(e["median"] > 0 for e in table.entries.values())
  for k in ("backend", "device_kind", "batch_size", "dtype", "jax_version", "date"):
    assert k in table.meta
  loaded.check(batch_size=8, dtype="float32")
  foreign = dataclasses.replace(table, meta=dict(table.meta, device_kind="Pixel 8 CPU"))
  with pytest.raises(latency_lib.LatencyError, match="measured on .* 'Pixel 8 CPU'"):
    foreign.check()
  foreign.check(allow_foreign=True)
  # XLA names every CPU "cpu": the processor model and core count tell them apart.
  assert table.meta["cpu_model"] and table.meta["cpu_count"] == os.cpu_count()
  for change, shown in ((dict(cpu_model="Intel Core i7-7820X"), "'Intel Core i7-7820X' with"),
                        (dict(cpu_count=table.meta["cpu_count"] + 6), "cores"),
                        (dict(cpu_model=None), "without a processor stamp")):
    other = dataclasses.replace(table, meta=dict(table.meta, **change))
    with pytest.raises(latency_lib.LatencyError, match=shown):
      other.check()
    other.check(allow_foreign=True)
  with pytest.raises(latency_lib.LatencyError, match="batch_size 8, the config asks for 64"):
    table.check(batch_size=64)
  bad = tmp_path / "bad.json"
  bad.write_text('{"format": "dnas-latency-table/1", "meta": {}, "entries": {}}')
  with pytest.raises(latency_lib.LatencyError, match="meta lacks backend"):
    latency_lib.LatencyTable.load(bad)


def test_prediction_sums_the_genotype_ops(measured):
  table, _ = measured
  g = G2
  net = lambda k: max(table.lookup(k) - table.dispatch_ms, 0.0)  # a part faster than a call: 0
  total = darts_latency.fixed_latency(table, LAYOUT)
  for cell in LAYOUT.cells:
    edges = g.reduce if cell.reduction else g.normal
    for e, (name, j) in enumerate(edges):
      hw, stride = cell.edge(e // 2, j)
      total += net(latency_lib.op_key(name, (*hw, cell.C), cell.C, stride))
  assert darts_latency.predict(table, LAYOUT, g) == pytest.approx(total)


def test_expected_latency_is_the_hand_computed_sum_and_its_gradient_is_right():
  rng = np.random.default_rng(0)
  table = _synthetic_table(rng)
  expected = darts_latency.expected_latency(table, LAYOUT, OPS)
  E = 5
  a_n, a_r = rng.standard_normal((E, len(OPS))), rng.standard_normal((E, len(OPS)))
  b_n, b_r = rng.standard_normal(E), rng.standard_normal(E)
  # By hand: every final cell, every edge, every op but `none`.
  net = lambda k: max(table.lookup(k) - table.dispatch_ms, 0.0)  # a part faster than a call: 0
  for betas in (None, (b_n, b_r)):
    hand = darts_latency.fixed_latency(table, LAYOUT)
    for cell in LAYOUT.cells:
      a = a_r if cell.reduction else a_n
      e = 0
      for node in range(2):
        for j in range(node + 2):
          p = np.exp(a[e, 1:]) / np.exp(a[e, 1:]).sum()
          if betas is None:
            w = 2 / (node + 2)
          else:
            b = (betas[1] if cell.reduction else betas[0])[e - j:e - j + node + 2]
            w = 2 * np.exp(b[j]) / np.exp(b).sum()
          hw, stride = cell.edge(node, j)
          hand += w * sum(p[k - 1] * net(latency_lib.op_key(OPS[k], (*hw, cell.C), cell.C, stride))
                          for k in range(1, len(OPS)))
          e += 1
    args = (a_n, a_r) + (() if betas is None else betas)
    got = _expected(expected, *(jnp.asarray(x, jnp.float32) for x in args))
    np.testing.assert_allclose(float(got), hand, rtol=1e-5)
  # Gradient vs central differences (float64 numpy evaluation through the same function).
  f = lambda a: _expected(expected, a, jnp.asarray(a_r, jnp.float32),
                         jnp.asarray(b_n, jnp.float32), jnp.asarray(b_r, jnp.float32))
  grad = np.asarray(jax.grad(f)(jnp.asarray(a_n, jnp.float32)))
  eps = 1e-2
  for e, k in [(0, 1), (3, 3), (4, 2), (2, 0)]:
    d = np.zeros_like(a_n)
    d[e, k] = eps
    fd = (float(f(jnp.asarray(a_n + d, jnp.float32))) -
          float(f(jnp.asarray(a_n - d, jnp.float32)))) / (2 * eps)
    np.testing.assert_allclose(grad[e, k], fd, rtol=2e-2, atol=1e-4)
  assert np.all(grad[:, 0] == 0)  # `none` is outside the estimate


def test_derived_latency_is_the_derived_cell_with_the_expected_gradient():
  rng = np.random.default_rng(5)
  table = _synthetic_table(rng)
  model = darts_latency.DartsLatency(table, LAYOUT, OPS)
  E = 5
  for betas in (False, True):
    alphas = {k: jnp.asarray(rng.standard_normal((E, len(OPS))), jnp.float32)
              for k in ("alphas_normal", "alphas_reduce")}
    if betas:
      alphas.update({k: jnp.asarray(rng.standard_normal(E), jnp.float32)
                     for k in ("betas_normal", "betas_reduce")})
    genotype = darts.derive_genotype(
        alphas["alphas_normal"], alphas["alphas_reduce"], steps=2, multiplier=2,
        primitives=OPS, betas_normal=alphas.get("betas_normal"),
        betas_reduce=alphas.get("betas_reduce"))
    assert float(model.derived(alphas)) == pytest.approx(model.predict(genotype), rel=1e-5)
    g_derived = jax.grad(lambda a: model.derived(dict(alphas, alphas_normal=a)))(
        alphas["alphas_normal"])
    g_expected = jax.grad(lambda a: model.expected(dict(alphas, alphas_normal=a)))(
        alphas["alphas_normal"])
    np.testing.assert_allclose(g_derived, g_expected, rtol=1e-5, atol=1e-7)


def test_imagenet_parts_are_measured_in_eval_mode():
  layout = darts_latency.trace_layout(nnx.eval_shape(lambda: darts.NetworkImageNet(
      G2, 8, 10, 3, in_channels=3, rngs=nnx.Rngs(0))), (32, 32, 3))
  assert [c.hw0 for c in layout.cells[:2]] == [(8, 8), (4, 4)] and layout.stem_out == 8
  keys = darts_latency._fixed_keys(layout)
  assert keys[0] == "stem_imagenet|32x32x3->8|s1" and keys[-1].startswith("classifier|")
  for key in (keys[0], keys[-1]):
    assert darts_latency.measure(key, 2, jnp.float32, repeats=2)["median"] > 0
  expected = darts_latency.expected_latency(_synthetic_table(np.random.default_rng(0)),
                                                 LAYOUT, OPS)
  a = jnp.asarray(np.random.default_rng(1).standard_normal((5, 4)), jnp.float32)
  b = jnp.asarray(5 * np.random.default_rng(2).standard_normal(5), jnp.float32)
  assert float(_expected(expected, a, a, b, b)) >= expected.minimum()  # the FBNet check's bound


def test_objectives_follow_the_papers():
  ce, lat = jnp.float32(2.0), jnp.float32(30.0)
  fbnet = latency_lib.make_objective("fbnet", fbnet_alpha=0.2, fbnet_beta=0.6)
  np.testing.assert_allclose(fbnet(ce, lat), 2.0 * 0.2 * np.log(30.0) ** 0.6, rtol=1e-6)
  proxyless = latency_lib.make_objective("proxyless", weight=0.1)
  np.testing.assert_allclose(proxyless(ce, lat), 2.0 + 0.1 * 30.0, rtol=1e-6)
  target = latency_lib.make_objective("target", weight=0.5, target_ms=20.0)
  np.testing.assert_allclose(target(ce, lat), 2.0 + 0.5 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(target(ce, jnp.float32(10.0)), 2.0)
  assert latency_lib.make_objective("none") is None


def test_large_latency_weight_prefers_cheap_ops():
  # Tiny supernet, first order: with a huge weight on a table where sep_conv costs 100x
  # the rest, a few architecture steps drive its probability down on every edge.
  table = _synthetic_table(None, cost=lambda op: 10.0 if op == "sep_conv_3x3" else 0.1)
  expected = darts_latency.expected_latency(table, LAYOUT, OPS)
  objective = latency_lib.make_objective("proxyless", weight=10.0)
  net = darts.Network(2, 3, 2, steps=2, multiplier=2, stem_multiplier=1, in_channels=1,
                      primitives=OPS, rngs=nnx.Rngs(0))
  w_tx, a_tx = bilevel.make_w_tx(0.05), bilevel.make_a_tx(lr=0.05)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(0))
  arch_objective = lambda ce, alphas: ((lambda lat: (objective(ce, lat), {"a_latency_ms": lat}))
                                       (expected(alphas)))
  arch_step, _ = bilevel.make_phase_steps(graphdef, w_tx, a_tx,
                                          arch_loss=bilevel.arch_loss(arch_objective))
  arch_step = jax.jit(arch_step)
  rng = np.random.default_rng(1)
  batch = lambda: dict(image=jnp.asarray(rng.standard_normal((4, 6, 6, 1)), jnp.float32),
                       label=jnp.asarray(rng.integers(0, 3, 4), jnp.int32))
  lats = []
  for _ in range(5):
    state, metrics = arch_step(state, batch(), batch())
    lats.append(float(metrics["a_latency_ms"]))
    assert float(metrics["a_objective"]) > float(metrics["a_loss"])
  assert lats[-1] < lats[0]
  for name in ("alphas_normal", "alphas_reduce"):
    p = jax.nn.softmax(state.alphas[name].get_value(), axis=-1)
    assert np.all(np.asarray(p[:, 3]) < np.asarray(p[:, 1]))  # sep_conv below max_pool
  g = darts.derive_genotype(state.alphas["alphas_normal"].get_value(),
                            state.alphas["alphas_reduce"].get_value(), steps=2, multiplier=2,
                            primitives=OPS)
  assert all(op != "sep_conv_3x3" for op, _ in g.normal + g.reduce)


def test_calibration_fits_scale_and_offset():
  # End-to-end times made from a known affine map of the table's sums: the fitted
  # correction finds it, and the corrected prediction and expected latency follow it.
  rng = np.random.default_rng(2)
  table = _synthetic_table(rng)
  measured = []
  for _ in range(12):
    g = darts_latency.random_genotype(rng, OPS, steps=2, multiplier=2)
    measured.append((g, 0.55 * darts_latency.predict(table, LAYOUT, g) - 0.3))
  cal = table.calibrated([darts_latency.predict(table, LAYOUT, g) for g, _ in measured],
                         [ms for _, ms in measured])
  assert cal.meta["correction"]["scale"] == pytest.approx(0.55, rel=1e-4)
  assert cal.meta["correction"]["offset_ms"] == pytest.approx(-0.3, abs=1e-4)
  for g, ms in measured:
    assert darts_latency.predict(cal, LAYOUT, g) == pytest.approx(ms, rel=1e-4)
  raw = darts_latency.expected_latency(table, LAYOUT, OPS)
  corrected = darts_latency.expected_latency(cal, LAYOUT, OPS)
  a = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
  np.testing.assert_allclose(float(_expected(corrected, a, a)),
                             0.55 * float(_expected(raw, a, a)) - 0.3, rtol=1e-4)
