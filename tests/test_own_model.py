"""dnas inside a researcher's own model (experiments/own_model): the general discretizer,
latency of arbitrary MixedOps, the bilevel step, checkpoints and Linen interop, with no
DARTS-specific code."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dnas
from dnas import arch, bilevel, latency as latency_lib
from dnas.latency import mixed as mixed_latency
from experiments.own_model import linen as own_linen
from experiments.own_model.model import CANDIDATES, OwnNet
from tests import cli_helpers

OPS = tuple(CANDIDATES)


def _x(n=4, seed=None):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n, 8, 8, 1)), jnp.float32)


def test_choices_and_discretize_follow_argmax():
  net = OwnNet(width=4, blocks=1, rngs=nnx.Rngs(0))
  assert sorted(arch.mixed_ops(net)) == ["stage1/0/op", "stage2/0/op"]
  rng = np.random.default_rng(1)
  picks = {p: int(rng.integers(len(OPS))) for p in arch.mixed_ops(net)}
  for path, k in picks.items():  # alphas whose softmax is exactly one-hot in float32
    arch.mixed_ops(net)[path].alpha.set_value(jnp.where(jnp.arange(len(OPS)) == k, 200.0, 0.0))
  assert arch.choices(net) == picks
  final = arch.discretize(net)
  assert not arch.mixed_ops(final) and arch.mixed_ops(net)  # the original is untouched
  assert isinstance(final.stage1[0].op, type(arch.mixed_ops(net)["stage1/0/op"].ops[picks["stage1/0/op"]]))
  net.eval(), final.eval()
  x = _x()
  forward = nnx.jit(lambda m, x: m(x))  # one compile each, not one per eager op
  np.testing.assert_allclose(forward(final, x), forward(net, x), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="no MixedOp at 'stage3'"):
    arch.discretize(net, {"stage3": 0})
  with pytest.raises(ValueError, match="has 6 ops, got choice 9"):
    arch.discretize(net, {"stage1/0/op": 9})


def test_expected_latency_of_any_mixed_ops():
  net = OwnNet(width=4, blocks=1, rngs=nnx.Rngs(0))
  example = jnp.zeros((8, 8, 8, 1))
  shapes, _, _ = mixed_latency.mixed_op_shapes(net, example)  # traced
  assert {p: x.shape for p, (x, _) in shapes.items()} == {"stage1/0/op": (8, 8, 8, 4),
                                                         "stage2/0/op": (8, 4, 4, 8)}
  table = mixed_latency.profile(net, example, repeats=3)
  assert "stage1/0/op/2|8x8x4->4|s1" in table.entries and "rest|8x8x1->10|s1" in table.entries
  assert len(table.entries) == 2 * len(OPS) + 1
  table = latency_lib.LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
  expected = mixed_latency.expected_latency(table, net, example)
  _, _, alphas, _ = bilevel.split_supernet(net)
  # FBNet Eq. 4: rest + sum over MixedOps of softmax(alpha) . latencies.
  hand = expected.fixed_ms + sum(
      float(np.dot(jax.nn.softmax(arch.mixed_ops(net)[p].alpha.get_value()), lat[0]))
      for p, lat in expected.lat.items())
  np.testing.assert_allclose(float(expected(alphas)), hand, rtol=1e-5)
  # Its alpha gradient is the latency of each op relative to the mix: the cheapest op of
  # each MixedOp gets the most negative derivative.
  g = {arch.path_str(p[:-1]): v for p, v in nnx.to_flat_state(jax.grad(expected)(alphas))}
  for path, lat in expected.lat.items():
    lat = lat[0]
    d = np.asarray(g[path].get_value())
    w = np.asarray(jax.nn.softmax(arch.mixed_ops(net)[path].alpha.get_value()))
    np.testing.assert_allclose(d, w * (lat - np.dot(w, lat)), rtol=1e-4, atol=1e-7)
  picks = arch.choices(net)
  assert expected.predict(picks) == pytest.approx(
      expected.fixed_ms + sum(expected.lat[p][0, k] for p, k in picks.items()))
  assert expected.minimum() <= expected.predict(picks)


def test_search_retrain_and_resume_through_the_cli(tmp_path):
  # The experiment end to end through `python -m dnas.search` and `dnas.train` with its own
  # config (the generic MixedOp space), on a tiny model, with the latency term and the
  # exact second order; a rerun resumes from the checkpoint and searches no further.
  config = os.path.join(cli_helpers.ROOT, "experiments", "own_model", "config.py")
  ops = ("conv3_relu", "conv5_relu", "bottleneck_x0.5")  # three of the six compile faster
  tiny = [f"--config={config}", "--config.model.width=4", "--config.model.blocks=1",
          f"--config.model.ops={ops}", "--config.max_steps_per_epoch=2", "--progress=false"]
  search = [*tiny, f"--workdir={tmp_path}", "--config.search.epochs=1",
            "--config.search.order=second", "--config.latency.objective=proxyless",
            "--config.latency.weight=0.1", "--config.latency.repeats=3"]
  out = cli_helpers.run("dnas.search", *search)
  assert out.returncode == 0, out.stderr[-3000:]
  found = json.loads((tmp_path / "genotype.json").read_text())["choices"]
  assert set(found) == {"stage1/0/op", "stage2/0/op"}
  assert all(0 <= k < len(ops) for k in found.values())
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["predicted_latency_ms"] > 0 and record["a_latency_ms"] > 0
  assert record["genotype"]["choices"] == found
  assert set(record) >= {"alpha_entropy_stage1/0/op", "alpha_entropy_stage2/0/op"}
  again = cli_helpers.run("dnas.search", *search)
  assert again.returncode == 0 and "resuming" in again.stderr, again.stderr[-3000:]
  assert json.loads((tmp_path / "genotype.json").read_text())["choices"] == found
  out = cli_helpers.run("dnas.train", *tiny, f"--genotype={tmp_path / 'genotype.json'}",
                        "--config.train.epochs=1")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "train_result.json").read_text())
  assert 0.0 <= result["test_acc"] <= 1.0 and result["genotype"]["choices"] == found
  # Export needs the config file that registers the space; without it, one line says so.
  trained = f"--trained={tmp_path / 'trained'}"
  out = cli_helpers.run("dnas.export", trained, f"--config={config}", "--repeats=2")
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "model.jax_export").stat().st_size > 0
  out = cli_helpers.run("dnas.export", trained, "--repeats=2")
  assert out.returncode == 2 and "pass --config=" in out.stderr, out.stderr[-3000:]
  assert len(out.stderr.strip().splitlines()) == 1


def test_linen_module_as_candidate_op():
  model = own_linen.LinenCandidates(rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6, 6, 4)), jnp.float32)
  nnx.bridge.lazy_init(model, x)
  w_tx, a_tx = bilevel.make_w_tx(0.1), bilevel.make_a_tx(lr=0.01)
  graphdef, state = bilevel.init_search_state(model, w_tx, a_tx, jax.random.key(0))
  step = bilevel.make_search_step(graphdef, w_tx, a_tx)  # first order
  batch = dict(image=x, label=jnp.arange(4) % 10)
  new, metrics = step(jax.tree.map(jnp.copy, state), batch, batch)
  linen_kernel = ("mixed", "ops", 0, "kernel")
  flat_old, flat_new = (dict(nnx.to_flat_state(s.params)) for s in (state, new))
  assert not np.allclose(flat_new[linen_kernel].get_value(), flat_old[linen_kernel].get_value())
  assert not np.allclose(jax.tree.leaves(new.alphas)[0], jax.tree.leaves(state.alphas)[0])
  assert np.isfinite(metrics["a_loss"])


def test_searched_network_used_from_linen():
  picks = {"stage1/0/op": OPS.index("bottleneck_x2"), "stage2/0/op": OPS.index("conv5_relu")}
  trained = own_linen.searched_net(picks, 4, 1, False, rngs=nnx.Rngs(3))
  model = own_linen.SearchedClassifier(picks, width=4, blocks=1)
  x = _x(seed=None)
  variables = model.init(jax.random.key(0), x)
  assert set(variables) == {"params", "batch_stats"}  # discretised: no ArchParam left
  # The trained NNX network's state, in Linen form: Linen gives its outputs.
  ours = own_linen.linen_variables(trained)
  variables = {c: {**variables[c], **ours[c]} for c in variables}
  dense = variables["params"]["calibration"]
  want = trained(x) @ dense["kernel"] + dense["bias"]
  np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_docs_own_model_example_runs(tmp_path):
  # docs/own_model.md's "Search inside your own model" block, as written (second order,
  # latency objective, checkpoint, discretisation), with the checkpoint in tmp_path.
  readme = open(os.path.join(cli_helpers.ROOT, "docs", "own_model.md")).read()
  start = readme.index("```python", readme.index("## Search inside your own model")) + 9
  code = readme[start:readme.index("```", start)]
  assert len(code.strip().splitlines()) < 30
  scope = {}
  exec(compile(code.replace("/tmp/dnas_mine/ckpt", str(tmp_path / "ckpt")), "own_model.md", "exec"),
       scope)
  assert set(scope["picks"]) == {"op"} and not arch.mixed_ops(scope["final"])
  assert np.isfinite(float(scope["metrics"]["a_objective"]))
  assert os.listdir(tmp_path / "ckpt") == ["3"]


class _Sows(nnx.Module):
  """A model that sows an intermediate and holds a nested MixedOp."""

  def __init__(self, rngs):
    inner = dnas.MixedOp([nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs)], rngs=rngs)
    self.op = dnas.MixedOp([inner, nnx.Linear(3, 3, rngs=rngs)], rngs=rngs)
    self.head = nnx.Linear(3, 10, rngs=rngs)

  def __call__(self, x):
    h = self.op(x)
    self.sow(nnx.Intermediate, "features", h)
    return self.head(h)


@pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")
def test_sown_intermediates_and_nested_mixed_ops():
  model = _Sows(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3)), jnp.float32)
  model(x)  # leaves an nnx.Intermediate in the model, which the steps do not carry
  w_tx, a_tx = bilevel.make_w_tx(0.1), bilevel.make_a_tx(lr=0.01)
  graphdef, state = bilevel.init_search_state(model, w_tx, a_tx, jax.random.key(0))
  step = bilevel.make_search_step(graphdef, w_tx, a_tx)
  batch = dict(image=x, label=jnp.arange(4))
  new, metrics = step(state, batch, batch)
  assert np.isfinite(metrics["a_loss"]) and int(new.step) == 1
  assert sorted(arch.mixed_ops(model)) == ["op", "op/ops/0"]
  assert type(arch.discretize(model, {"op": 0, "op/ops/0": 1}).op).__name__ == "Linear"
  with pytest.raises(latency_lib.LatencyError, match="op/ops/0 is nested inside"):
    mixed_latency.profile(model, x, repeats=1)
