"""The robust methods' formulas on tiny cases against hand computations, and their
config checks (`dnas.methods`)."""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import arch, checkpoint as checkpoint_lib, config as config_lib, methods
from dnas.configs import nb201 as nb201_config
from dnas.methods import beta_darts, drnas


def test_dirichlet_weights_lie_on_the_simplex_and_evaluate_at_the_mean():
  logits = jnp.array([[0.3, -0.2, 1.0], [0.0, 0.0, 0.0]])
  w = arch.op_weights(logits, "dirichlet", jax.random.key(0))
  assert w.shape == (2, 3) and bool(jnp.all(w > 0))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  beta = np.where(np.asarray(logits) > 0, np.asarray(logits), np.expm1(np.asarray(logits))) + 1
  np.testing.assert_allclose(arch.op_weights(logits, "dirichlet"),
                             beta / beta.sum(-1, keepdims=True), rtol=1e-6)


def test_dirichlet_pathwise_gradient_is_unbiased():
  # E[d w / d alpha] over samples = d E[w] / d alpha = d (beta_0 / sum beta) / d alpha,
  # beta = ELU(alpha) + 1: by hand, for alpha = (0.5, -0.4, 0.2).
  alpha = jnp.array([0.5, -0.4, 0.2])
  keys = jax.random.split(jax.random.key(1), 40_000)
  grads = jax.vmap(jax.grad(lambda a, k: arch.op_weights(a, "dirichlet", k)[0]),
                   in_axes=(None, 0))(alpha, keys)
  a = np.asarray(alpha, np.float64)
  beta = np.where(a > 0, a, np.expm1(a)) + 1
  dbeta = np.where(a > 0, 1.0, np.exp(a))  # ELU's derivative
  s = beta.sum()
  want = -beta[0] / s ** 2 * dbeta
  want[0] += dbeta[0] / s
  sem = np.asarray(grads).std(0) / math.sqrt(len(keys))
  np.testing.assert_allclose(np.asarray(grads).mean(0), want, atol=4 * sem.max() + 1e-4)


def test_sigmoid_weights_are_independent():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  np.testing.assert_allclose(arch.op_weights(logits, "sigmoid"),
                             1 / (1 + np.exp(-np.asarray(logits))), rtol=1e-6)


def test_kl_to_uniform_by_hand():
  # beta = (1, 1): the anchor itself, KL 0. beta = (2, 1) (alpha = (1, 0)):
  # KL(Beta(2, 1) || U(0, 1)) = E[log 2x] = log 2 + psi(2) - psi(3) = log 2 - 1/2.
  kl = drnas.kl_to_uniform(jnp.array([[0.0, 0.0], [1.0, 0.0]]))
  np.testing.assert_allclose(kl, [0.0, math.log(2) - 0.5], atol=1e-6)


class _Arch(nnx.Module):
  def __init__(self):
    self.ops = arch.ArchParam(jnp.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]))
    self.more = arch.ArchParam(jnp.array([3.0, 0.0, 0.0]))   # a standalone MixedOp's f32[K]
    self.edges = arch.EdgeParam(jnp.array([5.0, -5.0]))      # PC-DARTS's beta: not ops


def _alphas():
  return nnx.split(_Arch(), arch.ArchParam)[1]


def test_op_logits_leave_edge_logits_out():
  rows = arch.op_logits(_alphas())
  assert sorted(r.shape for r in rows) == [(1, 3), (2, 3)]
  doubled = arch.map_op_logits(lambda x: 2 * x, _alphas())
  np.testing.assert_allclose(doubled["ops"][...], 2 * _alphas()["ops"][...])
  np.testing.assert_allclose(doubled["edges"][...], _alphas()["edges"][...])


def test_beta_decay_term_by_hand():
  lse = [math.log(1 + math.e + math.e ** 2), math.log(3 * math.e),
         math.log(math.e ** 3 + 2)]
  assert float(beta_darts.beta_decay(_alphas())) == pytest.approx(np.mean(lse), rel=1e-6)
  term = beta_darts.beta_term(lambda_max=50.0, epochs=10, steps_per_epoch=7)
  for step, lam in ((0, 0.0), (6, 0.0), (7, 5.0), (69, 45.0)):
    value, metrics = term(_alphas(), jnp.int32(step))
    assert float(metrics["beta_lambda"]) == pytest.approx(lam)
    assert float(value) == pytest.approx(lam * np.mean(lse), rel=1e-6)
  # Its gradient in each row is softmax(row) / rows: the leading ops are held back most.
  g = jax.grad(lambda a: beta_darts.beta_decay(a))(_alphas())
  np.testing.assert_allclose(g["ops"][...][0], jax.nn.softmax(jnp.array([0.0, 1.0, 2.0])) / 3,
                             rtol=1e-6)
  assert float(jnp.abs(g["edges"][...]).max()) == 0.0


def test_method_presets_build_their_parts():
  c = nb201_config.get_config()
  c.method = "drnas"
  parts = methods.build(c, steps_per_epoch=7)
  assert parts.relaxation.kind == "dirichlet" and parts.terms == () and parts.a_weight_decay is None
  c.drnas.reg = "kl"
  parts = methods.build(c, steps_per_epoch=7)
  assert len(parts.terms) == 1 and parts.a_weight_decay == 0.0
  c.method = "beta_darts"
  parts = methods.build(c, steps_per_epoch=7)
  assert parts.relaxation.kind == "softmax" and len(parts.terms) == 1


@pytest.mark.parametrize("change,message", [
    ({"method": "drnaz"}, "method 'drnaz' is unknown; valid: darts, pc_darts, drnas"),
    ({"method": "drnas", "search.relaxation": "gumbel"}, "method drnas draws its op weights "
     "from a dirichlet relaxation; search.relaxation must stay softmax"),
    ({"method": "drnas", "drnas.reg": "l1"}, "drnas.reg 'l1' is unknown; valid: l2, kl"),
    ({"method": "beta_darts", "beta_darts.lambda_max": -1.0}, "beta_darts.lambda_max must "
     "be >= 0"),
    ({"method": "pc_darts"}, "method 'pc_darts' is not available for space nb201"),
    ({"method": "darts_minus", "darts_minus.decay": "step"}, "darts_minus.decay 'step' is "
     "unknown; valid: linear, cosine"),
    ({"method": "fair_darts", "fair_darts.threshold": 1.5}, "fair_darts.threshold must be in "
     "(0, 1), got 1.5"),
    ({"search.early_stop": True}, "search.early_stop (DARTS-ES) needs "
     "search.hessian_every > 0"),
    ({"search.ada": True}, "search.ada (DARTS-ADA) needs search.hessian_every > 0"),
    ({"search.ada": True, "search.early_stop": True, "search.hessian_every": 1},
     "search.ada and search.early_stop exclude each other"),
    ({"search.ada": True, "search.hessian_every": 1, "robust_darts.mul_factor": 1.0},
     "robust_darts.mul_factor 1.0 must be > 1"),
    ({"search.hessian_every": 1, "robust_darts.window": 0}, "robust_darts.window must be a "
     "positive integer, got 0"),
    ({"method": "sdarts_rs", "search.relaxation": "gumbel"}, "method sdarts_rs perturbs "
     "softmax op weights; search.relaxation must be softmax, got 'gumbel'"),
    ({"method": "drnas", "drnas.stage_epochs": (1, 1)}, "drnas.stage_epochs (progressive "
     "learning) needs space darts with model.partial_channels=True, got space 'nb201'"),
    ({"drnas.stage_epochs": (1, 1)}, "drnas.stage_epochs is DrNAS's progressive learning; "
     "it needs method drnas, got method darts"),
    ({"latency.estimate": "mean"}, "latency.estimate 'mean' is unknown; valid: expected, "
     "derived"),
    ({"search.step_order": "both"}, "search.step_order 'both' is unknown; valid: arch_first, "
     "weight_first"),
    ({"method": "spos"}, "method spos trains no architecture weights: it chooses with "
     "search.selection=supernet, got 'argmax'"),
    ({"method": "spos", "search.selection": "supernet", "latency.objective": "target",
      "latency.weight": 1.0, "latency.target_ms": 3.0}, "method spos takes no architecture "
     "steps, so no latency objective"),
    ({"search.relaxation": "uniform"}, "search.relaxation uniform draws paths that ignore "
     "the architecture weights: it is method spos's, got method darts"),
    ({"search.selection": "supernet", "search.select_num": -1}, "search.select_num must be "
     ">= 0, got -1"),
    ({"latency.limit_ms": 3.0, "search.selection": "pt"}, "latency.limit_ms binds the argmax "
     "and supernet selections"),
    ({"latency.limit_ms": 3.0}, "space nb201 takes its latency from latency.table"),
])
def test_bad_method_settings_are_one_line(change, message):
  c = nb201_config.get_config()
  for key, value in change.items():
    *path, name = key.split(".")
    node = c
    for part in path:
      node = node[part]
    node[name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, "search")
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"drnas.stage_k": (4,)}, "drnas.stage_epochs, stage_k and stage_keep need one entry per "
     "stage, got 2, 1 and 2"),
    ({"drnas.stage_epochs": (1, 2)}, "drnas.stage_epochs [1, 2] must each exceed "
     "search.arch_start_epoch (0: each stage warms up first) and sum to search.epochs (2)"),
    ({"search.arch_start_epoch": 1}, "must each exceed search.arch_start_epoch (1"),
    ({"latency.objective": "proxyless", "latency.weight": 1.0}, "does not take a latency "
     "objective"),
    ({"checkpoint.keep": 1}, "needs checkpoint.keep >= 2"),
    ({"model.op_mask": {"normal": [[True] * 8] * 4, "reduce": [[False] * 8] * 5}},
     "model.op_mask['normal'] must be 5 x 8 booleans"),
    ({"drnas.stage_k": (2, 4)}, "the first stage is the supernet of the config: "
     "drnas.stage_k[0] must be model.pc_k (4)"),
    ({"drnas.stage_keep": (8, 9)}, "drnas.stage_keep [8, 9] must not grow"),
    ({"drnas.stage_k": (4, 3)}, "drnas.stage_k [4, 3]: each must be >= 2 (partial channels) "
     "and divide model.C=8"),
    ({"search.selection": "pt"}, "drnas.stage_epochs (progressive learning) takes the argmax "
     "selection"),
])
def test_bad_drnas_stages_are_one_line(change, message):
  from dnas.configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.method, c.model.C, c.model.partial_channels, c.search.epochs = "drnas", 8, True, 2
  c.drnas.update(stage_epochs=(1, 1), stage_k=(4, 2), stage_keep=(8, 4))
  config_lib.validate(c, "search")
  for key, value in change.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, "search")
  assert message in str(e.value) and "\n" not in str(e.value)


def test_supernet_selection_and_limit_need_an_enumerable_space():
  from dnas.configs import tiny  # pylint: disable=g-import-not-at-top
  for key, value in (("selection", "supernet"), ("limit_ms", 3.0)):
    c = tiny.get_config()
    c["search" if key == "selection" else "latency"][key] = value
    with pytest.raises(config_lib.ConfigError, match="which space darts cannot list; it is "
                       "for: nb201"):
      config_lib.validate(c, "search")


def test_limit_below_the_fastest_architecture_is_one_line():
  from dnas import latency, search_lib  # pylint: disable=g-import-not-at-top
  c = nb201_config.get_config()
  c.latency.update(table=EAGLE_TABLE, allow_foreign_table=True, batch_size=1, limit_ms=0.01)
  with pytest.raises(latency.LatencyError, match=r"latency.limit_ms 0.01 is below the "
                     r"fastest architecture's predicted [0-9.]+ ms$"):
    search_lib.latency_setup(c, None)
  c.latency.limit_ms = 2.8
  assert search_lib.latency_setup(c, None)[1].minimum() < 2.8


def test_uniform_paths_are_one_hot_uniform_and_ignore_the_alphas():
  logits = jnp.asarray([[5.0, 0.0, -5.0, 0.0]] * 6)
  keys = jax.random.split(jax.random.key(0), 4000)
  w = jax.vmap(lambda k: arch.op_weights(logits, "uniform", k))(keys)
  assert w.shape == (4000, 6, 4) and set(np.unique(w)) == {0.0, 1.0}
  assert np.all(w.sum(-1) == 1.0)
  freq = np.asarray(w.mean(0))  # 1/4 each, whatever the logits (sd of one ~0.007)
  assert np.abs(freq - 0.25).max() < 0.03
  g = jax.grad(lambda a: jnp.sum(arch.op_weights(a, "uniform", keys[0]) * 3.0))(logits)
  assert np.all(np.asarray(g) == 0.0)
  np.testing.assert_allclose(arch.op_weights(logits, "uniform"), jax.nn.softmax(logits, -1))
  assert arch.runs_one_op("uniform", keys[0], False)
  assert not arch.runs_one_op("uniform", None, False)
  assert not arch.runs_one_op("gumbel", keys[0], False)
  parts = methods.build(_spos_config(), steps_per_epoch=7)
  assert parts.relaxation.kind == "uniform" and not parts.arch_steps
  assert set(parts.relaxation.model_inputs(keys[0], 0)) == {"arch_key"}


def test_spos_supernet_runs_the_drawn_path_alone():
  # Called with a key, the uniform supernet is the network of the path that key draws
  # (the one-hot mixture of the same weights), a different path for another key, and
  # only the drawn op of each edge gets a weight gradient.
  from dnas.spaces import nb201  # pylint: disable=g-import-not-at-top
  net = nb201.Network(2, 1, 10, in_channels=1, relaxation="uniform",
                      primitives=("skip_connect", "nor_conv_1x1"), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  k = jax.random.key(2)
  path = arch.uniform_path(k, net.alphas[...])

  @nnx.jit
  def run(m, k):
    def loss(m):
      y = m(x, arch_key=k)
      return jnp.sum(y ** 2), y
    return nnx.value_and_grad(loss, has_aux=True)(m)
  ((_, drawn), grads), ((_, other), _) = run(net, k), run(net, jax.random.key(3))
  one_hot = nnx.jit(lambda m: m(x, weights=path))(net)
  np.testing.assert_allclose(drawn, one_hot, rtol=1e-5, atol=1e-6)
  assert not np.allclose(other, drawn)
  for c in (0, 2, 4):  # the search cells, between the reduction blocks
    for e in range(6):
      for op in range(2):
        ops = grads["cells"][c]["edges"][e]["ops"]  # skip_connect holds no weights
        norm = sum(float(jnp.sum(jnp.abs(g))) for g in
                   (jax.tree.leaves(ops[op]) if op in ops else []))
        drawn = op == int(np.argmax(path[e]))
        # skip_connect has no weights; a drawn convolution gets a gradient
        assert (norm > 0) == (drawn and op > 0), (c, e, op, norm)


def _spos_config():
  c = nb201_config.get_config()
  c.method, c.search.selection = "spos", "supernet"
  c.model.primitives = ("none", "skip_connect", "nor_conv_3x3")
  return c


class _Convs:
  """A stand-in latency model: 1 ms per convolution."""

  def predict(self, a):
    return float(sum(op == "nor_conv_3x3" for op in a.ops))


def test_supernet_selection_takes_the_best_scored_candidate_within_the_limit():
  from dnas import selection  # pylint: disable=g-import-not-at-top
  from dnas.spaces.nb201 import space as nb201_space  # pylint: disable=g-import-not-at-top
  value = np.random.default_rng(3).uniform(0, 1, (6, 3))
  scored = []

  def score(state, w):  # a stand-in supernet: accuracy sum_e w_e . value_e
    scored.append(w)
    return np.einsum("aek,ek->a", w, value)
  c = _spos_config()
  c.latency.limit_ms, c.search.select_num = 2.0, 0
  model = config_lib.space_section(c)
  ctx = selection.Context(space=nb201_space.SPACE, config=c, model=model, state=None,
                          evaluate=None, train=None, weight_batches=None, score=score,
                          latency=_Convs())
  got = selection.SELECTIONS["supernet"](ctx)
  every = nb201_space.SPACE.candidates(model)
  assert len(every) == 3 ** 6
  within = [a for a in every if _Convs().predict(a) <= 2.0]
  want = max(within, key=lambda a: np.sum(nb201_space.SPACE.one_hot(a, model) * value))
  assert got == want and len(scored[0]) == len(within) == 496  # 64 + 6*32 + 15*16
  c.search.select_num = 10  # RANDOM-NAS: the best of a seeded uniform draw of candidates
  first = selection.SELECTIONS["supernet"](ctx)
  assert len(scored[-1]) == 10 and selection.SELECTIONS["supernet"](ctx) == first
  assert np.all(np.einsum("aek,ek->a", scored[-1], value) <= np.sum(
      nb201_space.SPACE.one_hot(first, model) * value) + 1e-12)


def test_argmax_within_the_limit_is_the_most_probable_architecture_within_it():
  from typing import NamedTuple  # pylint: disable=g-import-not-at-top
  from dnas import selection  # pylint: disable=g-import-not-at-top
  from dnas.spaces.nb201 import Structure, space as nb201_space  # pylint: disable=g-import-not-at-top

  class State(NamedTuple):
    alphas: dict
  alphas = np.zeros((6, 3), np.float32)
  alphas[:, 2] = 2.0  # every edge prefers the convolution...
  alphas[4, 2], alphas[4, 1] = 0.5, 0.4  # ...edge 4 least, then the skip there
  c = nb201_config.get_config()
  c.model.primitives = ("none", "skip_connect", "nor_conv_3x3")
  state = State({"alphas": nnx.Param(jnp.asarray(alphas))})
  ctx = selection.Context(space=nb201_space.SPACE, config=c,
                          model=config_lib.space_section(c), state=state, evaluate=None,
                          train=None, weight_batches=None, latency=_Convs())
  assert selection.SELECTIONS["argmax"](ctx) == Structure(("nor_conv_3x3",) * 6)
  c.latency.limit_ms = 5.0  # one convolution must go: where it costs least probability
  assert selection.SELECTIONS["argmax"](ctx) == Structure(("nor_conv_3x3",) * 4 + (
      "skip_connect", "nor_conv_3x3"))


def test_darts_cells_count_their_parameter_free_ops():
  from dnas import spaces  # pylint: disable=g-import-not-at-top
  from dnas.spaces import darts  # pylint: disable=g-import-not-at-top
  got = spaces.get("darts").arch_metrics(darts.DARTS_V2, None)
  assert got == {"param_free_ops_normal": 2, "param_free_ops_reduce": 8}


EAGLE_TABLE = (f"{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"
               "/experiments/nb201_eagle/latency_table_i7-7820x.json")
# A tenth of the digits training split as the architecture split: every epoch's evaluation
# and DARTS-PT's (one per op of each edge) go over it, and the tests assert how the
# methods run, not what they find.
NB201_TINY = ["--config.model.C=4", "--config.train.C=4", "--config.train.N=1",
              "--config.model.primitives=('none','skip_connect','nor_conv_3x3')",
              "--config.search.batch_size=8", "--config.data.train_portion=0.9"]


# One CLI search per method, the spaces alternating (each costs a compile: about 35 s on
# 2 cores); both spaces of every method were run by hand (BUILD_NOTES.md).
@pytest.mark.parametrize("space,method,extra,logged", [
    ("nb201", "drnas", ["--config.drnas.reg=kl"], "drnas_kl"),
    # beta-DARTS, then DARTS-PT's projection on the DARTS space (5 edges, 2 nodes a cell).
    ("darts", "beta_darts", ["--config.search.selection=pt", "--config.darts_pt.interval=1"],
     "beta_lambda"),
    ("nb201", "sdarts_adv", [], "param_free_ops"),
    # SDARTS-RS with partial channels (a method composed with PC-DARTS's sampling).
    ("darts", "sdarts_rs", ["--config.model.partial_channels=true", "--config.model.pc_k=2"],
     "param_free_ops_reduce"),
    ("nb201", "darts_minus", [], "param_free_ops"),
    ("darts", "fair_darts", [], "fair_below_threshold"),
    # RobustDARTS's signal, logged per epoch, DARTS-ADA on it (its rule made to fire at
    # once: back to epoch 0 with weight decay 5e-4 * 3, which is its maximum here), and
    # DARTS-PT's selection (after any method; here plain DARTS).
    ("nb201", "darts", ["--config.search.hessian_every=1", "--config.search.ada=true",
                        "--config.robust_darts.window=1", "--config.robust_darts.delta=1",
                        "--config.robust_darts.es_start_epoch=0",
                        "--config.robust_darts.factor=0", "--config.search.weight_decay=5e-4",
                        "--config.robust_darts.max_weight_decay=15e-4",
                        "--config.search.selection=pt", "--config.darts_pt.interval=1"],
     "hessian_max_eig"),
    # SPOS: weight steps on uniform paths, then the supernet's best of 8 candidates
    # predicted within 2.8 ms on EAGLE's i7-7820X.
    ("nb201", "spos", ["--config.search.selection=supernet", "--config.search.select_num=8",
                       f"--config.latency.table={EAGLE_TABLE}", "--config.latency.limit_ms=2.8",
                       "--config.latency.allow_foreign_table=true",
                       "--config.latency.batch_size=1"], "valid_acc"),
])
def test_one_epoch_search_per_method(tmp_path, space, method, extra, logged):
  from tests import cli_helpers  # pylint: disable=g-import-not-at-top
  config = (cli_helpers.TINY if space == "darts"
            else f"{cli_helpers.ROOT}/dnas/configs/nb201.py")
  small = ([cli_helpers.FAST[3]] if space == "darts" else NB201_TINY)
  out = cli_helpers.run("dnas.search", f"--config={config}", *small, *extra,
                        f"--config.method={method}", "--config.search.epochs=2",
                        "--config.max_steps_per_epoch=2", f"--workdir={tmp_path}",
                        "--progress=false")
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == 2 and logged in records[-1]
  assert all(np.isfinite(r.get("a_loss", 0.0)) and np.isfinite(r["w_loss"]) for r in records)
  assert (tmp_path / "genotype.json").exists()
  if method == "spos":  # no architecture steps; the selection's pick is what was written
    assert not any("a_loss" in r or "genotype" in r for r in records)
    best = [l for l in out.stdout.splitlines()
            if l.startswith("selection: the supernet's best of 8 candidates: ")]
    found = json.loads((tmp_path / "genotype.json").read_text())["arch"]
    assert len(best) == 1 and f"candidates: {found} (" in best[0], out.stdout[-2000:]
    from dnas.latency.table import LatencyTable  # pylint: disable=g-import-not-at-top
    from dnas.spaces.nb201 import NAS_BENCH_201, Structure  # pylint: disable=g-import-not-at-top
    from dnas.spaces.nb201.latency import CellLatency  # pylint: disable=g-import-not-at-top
    table = CellLatency(LatencyTable.load(EAGLE_TABLE), NAS_BENCH_201)
    assert table.predict(Structure.from_string(found)) <= 2.8
  if "--config.search.ada=true" in extra:  # one rollback, from epoch 1 to epoch 0
    assert [r["weight_decay"] for r in records] == [5e-4, pytest.approx(15e-4)]
    assert out.stdout.count("DARTS-ADA: ") == 1, out.stdout[-2000:]
    assert "going back to epoch 0 with weight decay 0.0015" in out.stdout
    # The decay is optimiser state: the run after the rollback steps the same programs.
    assert len(re.findall(r"dnas: (compiled|loaded) the search step", out.stderr)) == 1, (
        out.stderr[-3000:])
  if "--config.search.selection=pt" in extra:  # nb201: six edges; darts: 5 + 2 of each cell
    decisions = [l for l in out.stdout.splitlines() if l.startswith("DARTS-PT: ")]
    assert len(decisions) == (6 if space == "nb201" else 14), out.stdout[-2000:]
    found = json.loads((tmp_path / "genotype.json").read_text())
    if space == "darts":  # the projection's choice is what was written
      kept = [l.split(": ", 2)[2].split(" (")[0] for l in decisions if " edge " in l]
      assert {op for op, _ in found["normal"] + found["reduce"]} <= set(kept)


def test_ada_refuses_checkpoints_with_the_decay_in_the_program():
  # A DARTS-ADA run written before the decay became optimiser state does not restore
  # into today's state: one line says so instead of a fresh start over its directory.
  from dnas.methods import robust_darts  # pylint: disable=g-import-not-at-top
  c = nb201_config.get_config()
  c.search.ada, c.search.hessian_every = True, 1
  run = methods.SearchRun(config=c, user_config=c, model=None, space=None, info=None,
                          ckpt_dir="/runs/ada/checkpoints", steps_per_epoch=7, mesh=None,
                          loss_fn=None, arch_batch=None, fresh_state=None, meta={})
  hooks = robust_darts.RobustDartsHooks()
  old = {"records": [], "epoch": 3, "ada": [dict(epoch=2, rollback=0, weight_decay=9e-4)]}
  with pytest.raises(config_lib.ConfigError, match=r"^the checkpoints of this DARTS-ADA "
                     r"search were written by a dnas that kept the weight decay in the "
                     r"program"):
    hooks.run_config(c, old)  # with the latest meta, before any state is built
  hooks.check_restored(run, None, None)  # a new run: its checkpoints say where the decay is
  assert run.meta == {"weight_decay_in_state": True}
  hooks.check_restored(run, dict(run.meta), dict(run.meta))
  assert hooks.run_config(c, dict(run.meta, records=[])) is c  # today's layout goes on


def test_sdarts_clip_by_hand():
  from dnas.methods import sdarts  # pylint: disable=g-import-not-at-top
  got = sdarts.clip(jnp.array([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.2]]))
  np.testing.assert_allclose(got, [[0.5 / 1.4, 0.0, 0.9 / 1.4], [1.0, 0.0, 0.0]], rtol=1e-6)
  assert float(sdarts.epsilon_at(jnp.int32(0), epsilon=0.3, epsilon_min=0.03, epochs=10,
                                 steps_per_epoch=7)) == pytest.approx(0.03)
  assert float(sdarts.epsilon_at(jnp.int32(35), epsilon=0.3, epsilon_min=0.03, epochs=10,
                                 steps_per_epoch=7)) == pytest.approx(0.03 + 0.27 * 0.5)


def _two_op_alphas():
  class Two(nnx.Module):
    def __init__(self):
      self.alphas = arch.ArchParam(jnp.zeros((3, 2)))
  return nnx.split(Two(), arch.ArchParam)[1]


def test_sdarts_random_perturbation_stays_in_the_ball_on_the_simplex():
  from dnas.methods import sdarts  # pylint: disable=g-import-not-at-top
  alphas = _two_op_alphas()
  perturb = sdarts.make_perturb("random", epsilon=0.2, epsilon_min=0.2, epochs=10,
                                steps_per_epoch=7)
  got = jax.nn.softmax(perturb(alphas, jax.random.key(3), jnp.int32(0), None)["alphas"][...])
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
  # Two ops: clip(0.5 + u) renormalised stays within 0.5 +- 0.2 (u in [-0.2, 0.2]).
  assert float(jnp.abs(got - 0.5).max()) <= 0.2 + 1e-6 and float(jnp.abs(got - 0.5).max()) > 0


def test_sdarts_adversarial_perturbation_ascends_to_the_ball_edge():
  # A loss linear in the op weights, L = sum_e (w_e0 - w_e1): its ascent pushes op 0 up
  # and op 1 down; 7 steps of 2 eps / 7 from any start in the ball end on its edge,
  # p = (0.5 + eps, 0.5 - eps). A "loss" that the attack lowers is reverted.
  from dnas.methods import sdarts  # pylint: disable=g-import-not-at-top
  alphas = _two_op_alphas()
  c = jnp.array([1.0, -1.0])

  def alpha_grad(sign):
    def fn(a):
      loss = lambda a: jnp.sum(jax.nn.softmax(a["alphas"][...]) @ c)
      return sign * loss(a), jax.grad(loss)(a)
    return fn
  perturb = sdarts.make_perturb("adversarial", epsilon=0.3, epsilon_min=0.3, epochs=10,
                                steps_per_epoch=7)
  got = perturb(alphas, jax.random.key(4), jnp.int32(0), alpha_grad(1.0))
  np.testing.assert_allclose(jax.nn.softmax(got["alphas"][...]), [[0.8, 0.2]] * 3, atol=1e-6)
  kept = perturb(alphas, jax.random.key(4), jnp.int32(0), alpha_grad(-1.0))
  np.testing.assert_allclose(kept["alphas"][...], alphas["alphas"][...])


def test_darts_minus_beta_schedules_by_hand():
  from dnas.methods import darts_minus  # pylint: disable=g-import-not-at-top
  at = lambda step, decay: float(darts_minus.beta_at(
      jnp.int32(step), beta=1.0, decay=decay, epochs=50, steps_per_epoch=7))
  assert at(0, "linear") == pytest.approx(1.0) and at(6, "linear") == pytest.approx(1.0)
  assert at(7 * 49, "linear") == pytest.approx(1 / 50)  # the official last epoch: 0.02
  assert at(7 * 25, "cosine") == pytest.approx(0.5) and at(0, "cosine") == pytest.approx(1.0)


def test_darts_reduction_cell_adds_the_auxiliary_skips():
  # node i = sum_j MixedOp_j(s_j) + beta * sum_j aux_j(s_j), aux a FactorizedReduce on the
  # stride-2 edges (j < 2) of a reduction cell and the identity on the others.
  from dnas.spaces.darts.search import Cell  # pylint: disable=g-import-not-at-top
  prims = ("none", "skip_connect", "sep_conv_3x3")
  cell = Cell(2, 2, 4, 4, 4, True, False, prims, auxiliary_skip=True, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  s0, s1 = (jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32) for _ in range(2))
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((5, 3)), jnp.float32))
  graphdef, state = nnx.split(cell)

  @jax.jit
  def both(state, beta):
    got = nnx.merge(graphdef, state, copy=True)(s0, s1, w, None, beta)
    c = nnx.merge(graphdef, state, copy=True)
    states, offset = [c.preprocess0(s0), c.preprocess1(s1)], 0
    for _ in range(2):
      n = len(states)
      node = sum(c.ops[offset + j](states[j], w[offset + j]) for j in range(n))
      aux = sum((c.aux_reduce[j](x) if j < 2 else x) for j, x in enumerate(states))
      states.append(node + beta * aux)
      offset += n
    return got, jnp.concatenate(states[-2:], axis=-1)

  got, want = both(state, jnp.float32(0.6))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert len(cell.aux_reduce) == 2


def test_fair_darts_zero_one_loss_by_hand():
  from dnas.methods import fair_darts  # pylint: disable=g-import-not-at-top
  sig = 1 / (1 + np.exp(-np.array([0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0])))
  want = -np.mean((sig - 0.5) ** 2)
  assert float(fair_darts.zero_one_loss(_alphas())) == pytest.approx(want, rel=1e-6)
  value, metrics = fair_darts.zero_one_term(10.0)(_alphas(), jnp.int32(3))
  assert float(value) == pytest.approx(10 * want, rel=1e-6)
  assert float(metrics["zero_one_loss"]) == pytest.approx(want, rel=1e-6)


def test_fair_darts_ranks_edges_by_sigmoid_weights():
  # Node 3's three inputs: by softmax the rows of inputs 2 (0.98) and 1 (0.95) lead, the
  # row of input 0 shares its weight between two strong ops (0.50 each); by sigmoid,
  # whose ops do not compete, input 0 (0.994) and input 2 (0.982) lead.
  from dnas.spaces import darts  # pylint: disable=g-import-not-at-top
  prims = ("none", "skip_connect", "sep_conv_3x3")
  a = np.array([[0, 2, 0], [0, 0, 2], [0, 5, 5.1], [0, 3, -10], [0, 4, -10]], np.float64)
  soft = darts.derive_genotype(a, a, steps=2, multiplier=2, primitives=prims)
  sig = darts.derive_genotype(a, a, steps=2, multiplier=2, primitives=prims, weights="sigmoid")
  assert sorted(soft.normal[2:]) == [("skip_connect", 1), ("skip_connect", 2)]
  assert sorted(sig.normal[2:]) == [("sep_conv_3x3", 0), ("skip_connect", 2)]


def test_darts_pt_keeps_the_op_whose_removal_hurts_most():
  # A stand-in supernet whose validation accuracy is sum_e w_e . value_e: removing op k of
  # edge e costs w_ek value_ek, so PT keeps argmax_k w_ek value_ek, here unlike the
  # argmax of alpha on edges 0 and 3; fine-tuning (here nothing) runs between decisions.
  from dnas import selection  # pylint: disable=g-import-not-at-top
  from dnas.spaces import nb201  # pylint: disable=g-import-not-at-top
  from dnas.spaces.nb201 import space as nb201_space  # pylint: disable=g-import-not-at-top
  from typing import NamedTuple  # pylint: disable=g-import-not-at-top

  class State(NamedTuple):
    alphas: dict
  rng = np.random.default_rng(5)
  alphas = rng.normal(0, 0.1, (6, 5))
  alphas[0, 2] = alphas[3, 4] = 1.0  # alpha's favourites on edges 0 and 3
  value = rng.uniform(0, 1, (6, 5))
  value[0, 1] = value[3, 0] = 50.0  # what the supernet needs there
  trained = []

  def evaluate(state, inputs):
    return 0.0, float(np.sum(np.asarray(inputs["weights"]) * value))

  def train(state, batches, inputs):
    trained.append(np.asarray(inputs["weights"]))
    return state
  c = nb201_config.get_config()
  c.darts_pt.interval = 2
  ctx = selection.Context(space=nb201_space.SPACE, config=c,
                          model=config_lib.space_section(c),
                          state=State({"alphas": jnp.asarray(alphas, jnp.float32)}),
                          evaluate=evaluate, train=train, weight_batches=lambda epoch=0: None)
  got = selection.SELECTIONS["pt"](ctx)
  w = np.asarray(jax.nn.softmax(jnp.asarray(alphas, jnp.float32), -1))
  want = nb201.Structure(tuple(nb201.NAS_BENCH_201[int(k)] for k in np.argmax(w * value, -1)))
  assert got == want and got.ops[0] == "skip_connect" and got.ops[3] == "none"
  assert len(trained) == 5 * 2  # interval epochs after each decision but the last
  assert np.allclose(trained[-1].sum(-1), 1.0, atol=1e-6)
  assert sorted(np.count_nonzero(t == 1.0) for t in trained[::2]) == [1, 2, 3, 4, 5]


def test_paper_configs_validate():
  from dnas.configs import robust_cifar10  # pylint: disable=g-import-not-at-top
  for method in robust_cifar10.METHODS:
    for space in ("", ",nb201"):
      c = robust_cifar10.get_config(method + space)
      config_lib.validate(c, "search")
      assert c.data.name == "cifar10" and c.space == ("nb201" if space else "darts")
      assert c.search.step_order == "arch_first"  # their scripts' order
  with pytest.raises(ValueError, match="expected METHOD"):
    robust_cifar10.get_config("dartz")
  from dnas.configs import nb201_cifar10  # pylint: disable=g-import-not-at-top
  c = nb201_cifar10.get_config()  # NAS-Bench-201's DARTS-V1: the weight step first
  config_lib.validate(c, "search")
  assert c.search.step_order == "weight_first"


def test_darts_pt_on_the_darts_space_projects_ops_then_inputs():
  # The DARTS space (2 nodes: 5 edges), with a stand-in supernet whose validation
  # accuracy is sum over both cells of w . value: PT keeps on each edge the op of the
  # largest w_ek value_ek (removing it costs the most), then node 3 keeps the two inputs
  # whose kept op adds the most (dropping the input whose removal leaves the highest
  # accuracy); node 2 has two inputs and keeps both. The Genotype is DARTS's parse of
  # the projected weights.
  from typing import NamedTuple  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from dnas import selection  # pylint: disable=g-import-not-at-top
  from dnas.arch import ArchParam  # pylint: disable=g-import-not-at-top
  from dnas.configs import tiny  # pylint: disable=g-import-not-at-top
  from dnas.spaces import darts  # pylint: disable=g-import-not-at-top
  from dnas.spaces.darts import space as darts_space  # pylint: disable=g-import-not-at-top

  class State(NamedTuple):
    alphas: nnx.State
  prims = ("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3")
  rng = np.random.default_rng(7)
  alphas = {c: rng.normal(0, 0.5, (5, 4)) for c in ("normal", "reduce")}
  value = {c: rng.uniform(0.1, 1, (5, 4)) for c in ("normal", "reduce")}
  for v in value.values():
    v[:, 0] = 0.0  # `none` adds nothing
  value["normal"][2, 3] = value["normal"][4, 1] = 40.0  # node 3 needs inputs 0 and 2
  value["reduce"][3, 2] = 40.0
  trained = []

  def evaluate(state, inputs):
    return 0.0, float(sum(np.sum(np.asarray(inputs["weights"][c]) * value[c])
                          for c in value))

  def train(state, batches, inputs):
    trained.append({c: np.asarray(w) for c, w in inputs["weights"].items()})
    return state
  c = tiny.get_config()
  c.model.update(steps=2, multiplier=2, primitives=prims)
  c.darts_pt.interval = 2
  state = State(nnx.State({f"alphas_{k}": ArchParam(jnp.asarray(a, jnp.float32))
                           for k, a in alphas.items()}))
  ctx = selection.Context(space=darts_space.SPACE, config=c,
                          model=config_lib.space_section(c), state=state, evaluate=evaluate,
                          train=train, weight_batches=lambda epoch=0: None)
  got = selection.SELECTIONS["pt"](ctx)

  def want(cell):
    w = np.asarray(jax.nn.softmax(jnp.asarray(alphas[cell], jnp.float32), -1))
    k = np.argmax(w * value[cell], -1)
    gain = value[cell][np.arange(5), k]
    node3 = sorted(sorted(range(3), key=lambda j: -gain[2 + j])[:2])
    return tuple([(prims[k[0]], 0), (prims[k[1]], 1)] + [(prims[k[2 + j]], j) for j in node3])
  assert got.normal == want("normal") and got.reduce == want("reduce")
  assert [j for _, j in got.normal[2:]] == [0, 2]
  assert got.normal != darts.derive_genotype(alphas["normal"], alphas["reduce"], steps=2,
                                             multiplier=2, primitives=prims).normal
  # Fine-tuning between decisions (5 op decisions + 2 node decisions, none after the
  # last), each cell's weights one-hot on its decided edges, growing one a decision.
  assert len(trained) == 6 * 2
  assert [int(np.sum(t["normal"] == 1.0)) for t in trained[::2]] == [1, 2, 3, 4, 5, 5]
  # No input is dropped before the node decisions (after the 5th op decision).
  assert all(np.count_nonzero(t[c].sum(-1)) == 5 for t in trained[:10] for c in t)


def test_drnas_prune_keeps_the_strongest_unpruned_ops_by_hand():
  logits = np.asarray([[0.3, -1.0, 2.0, 0.5], [1.0, 0.9, -0.2, 0.8]], np.float32)
  pruned, mask = drnas.prune(logits, 2)
  assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]
  np.testing.assert_allclose(pruned, [[0, 0, 2.0, 0.5], [1.0, 0.9, 0, 0]])
  # An op pruned before stays out, even when its logit (now 0) beats a kept one.
  old = np.asarray([[True, False, True, True], [True, True, True, False]])
  _, mask = drnas.prune(np.asarray([[-3.0, 0.0, -1.0, -2.0], [0.0, -1.0, -2.0, 5.0]]), 2, old)
  assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_drnas_masked_supernet_mixes_the_kept_ops_renormalised():
  from dnas.spaces.darts.search import Network  # pylint: disable=g-import-not-at-top
  ops = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  mask = {k: np.random.default_rng(i).random((5, 3)) < 0.6 for i, k in enumerate(
      ("normal", "reduce"))}
  for m in mask.values():
    m[:, 2] = True  # every edge keeps an op
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  net = Network(4, 10, 2, 2, 2, primitives=ops, in_channels=1, partial_channels=2,
                op_mask=mask, rngs=nnx.Rngs(0))
  plain = Network(4, 10, 2, 2, 2, primitives=ops, in_channels=1, partial_channels=2,
                  rngs=nnx.Rngs(0))
  w = {k: np.where(mask[k], sm, 0) / np.sum(np.where(mask[k], sm, 0), -1, keepdims=True)
       for k, sm in (("normal", jax.nn.softmax(net.alphas_normal[...])),
                     ("reduce", jax.nn.softmax(net.alphas_reduce[...])))}
  np.testing.assert_allclose(net(x), plain(x, weights=w), rtol=1e-5, atol=1e-6)
  # Derivation never picks a pruned op.
  net.alphas_normal[...] = jnp.where(mask["normal"], -1.0, 5.0)
  got = net.genotype()
  edges = [sum(2 + i for i in range(n)) + j for n, (_, j) in zip((0, 0, 1, 1), got.normal)]
  for (op, _), e in zip(got.normal, edges):
    assert mask["normal"][e, ops.index(op)], (op, e)


def test_drnas_widen_copies_channels_consistently_within_an_op():
  from dnas import bilevel  # pylint: disable=g-import-not-at-top
  from dnas.spaces.darts.search import Network  # pylint: disable=g-import-not-at-top
  ops = ("skip_connect", "sep_conv_3x3")

  def state(k):
    net = Network(8, 10, 2, 1, 1, primitives=ops, in_channels=1, partial_channels=k,
                  rngs=nnx.Rngs(0))
    return bilevel.split_supernet(net)[1:]

  (p4, _, s4), (p2, _, s2) = state(4), state(2)
  p4 = jax.tree.map(lambda x: x + np.random.default_rng(x.size).standard_normal(x.shape), p4)
  wide = drnas.widen(p4, p2, seed=3)
  assert jax.tree.map(np.shape, wide) == jax.tree.map(np.shape, p2)
  # Cell 0 (a reduction cell: C = 16), edge 0, sep_conv_3x3 (ops[1]): 16/4 -> 16/2 channels.
  old = p4["cells"][0]["ops"][0]["ops"][1]
  new = wide["cells"][0]["ops"][0]["ops"][1]
  dw_old, dw_new = (np.asarray(o["block1"]["dw"]["kernel"].get_value()) for o in (old, new))
  pw_old, pw_new = (np.asarray(o["block1"]["pw"]["kernel"].get_value()) for o in (old, new))
  assert dw_old.shape[-1] == 4 and dw_new.shape[-1] == 8
  np.testing.assert_array_equal(dw_new[..., :4], dw_old)
  idx = [next(i for i in range(4) if np.array_equal(dw_new[..., c], dw_old[..., i]))
         for c in range(4, 8)]  # the copied depthwise filters
  np.testing.assert_array_equal(pw_new[:, :, :4, :4], pw_old)
  np.testing.assert_array_equal(pw_new[:, :, 4:, :4], pw_old[:, :, idx, :])
  np.testing.assert_array_equal(pw_new[:, :, :4, 4:], pw_old[:, :, :, idx])
  # The momentum (the weight optimiser's state: other paths, ending in the weights' ones)
  # widens with the same copies as its weights.
  tx = bilevel.make_w_tx(lambda step: 0.1)
  by_path = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(p4)[0]}
  wide_by_path = {jax.tree_util.keystr(k): v
                  for k, v in jax.tree_util.tree_flatten_with_path(wide)[0]}

  def like_params(path, x, table):
    key = next((k for k in table if jax.tree_util.keystr(path).endswith(k)), None)
    return x if key is None else table[key]

  momentum = jax.tree_util.tree_map_with_path(
      lambda p, x: like_params(p, x, by_path), tx.init(p4))
  widened = drnas.widen(momentum, tx.init(p2), seed=3)
  checked = 0
  for path, x in jax.tree_util.tree_flatten_with_path(widened)[0]:
    want = like_params(path, None, wide_by_path)
    if want is not None:
      np.testing.assert_array_equal(x, want)
      checked += 1
  assert checked == len(wide_by_path)
  # A reduction cell's skip (FactorizedReduce, 32/4 -> 32/2 channels): each BatchNorm half
  # grows, with the copies its two convs' output channels got.
  fr = s4["cells"][1]["ops"][0]["ops"][0]["bn"]["mean"]
  fr[...] = jnp.arange(8.0)
  got = np.asarray(drnas.widen(s4, s2, seed=3, params=p4)["cells"][1]["ops"][0]["ops"][0]["bn"]["mean"]
                   .get_value())
  assert got.shape == (16,) and got[:4].tolist() == [0, 1, 2, 3]
  assert got[8:12].tolist() == [4, 5, 6, 7] and set(got[4:8]) <= {0, 1, 2, 3}
  assert (got[12:16] - 4).tolist() == got[4:8].tolist()


def test_drnas_progressive_search_prunes_widens_and_resumes_across_stages(tmp_path):
  # Two stages of two epochs (2 steps each), each warming up for one epoch: after the
  # first, every edge keeps 2 of its 3 ops and the partial channels widen from 1/4 to 1/2.
  # Then the run is resumed from the boundary's checkpoint (the widened state, its meta
  # naming stage 1): same end, bitwise. The Hessian's eigenvalue is measured every epoch,
  # in each stage on that stage's supernet.
  import shutil  # pylint: disable=g-import-not-at-top
  from tests import cli_helpers  # pylint: disable=g-import-not-at-top
  # Split programs: the warm-up and search steps share one gradient program per stage.
  args = [f"--config={cli_helpers.TINY}", "--config.method=drnas",
          "--config.model.partial_channels=true", "--config.model.C=8", "--config.model.pc_k=4",
          "--config.model.primitives=('max_pool_3x3','skip_connect','sep_conv_3x3')",
          "--config.search.epochs=4", "--config.max_steps_per_epoch=2",
          "--config.search.programs=split", "--config.search.arch_start_epoch=1",
          "--config.drnas.stage_epochs=(2,2)", "--config.drnas.stage_k=(4,2)",
          "--config.drnas.stage_keep=(3,2)", "--config.search.hessian_every=1",
          "--config.search.hessian_iters=2", "--progress=false"]
  first = tmp_path / "a"
  out = cli_helpers.run("dnas.search", *args, f"--workdir={first}", new_process=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("DrNAS: stage 1: 2 ops left per edge, partial channels 1/2") == 1
  ckpt = checkpoint_lib.Checkpointer(str(first / "checkpoints"))
  assert ckpt.steps() == [4, 6, 8]
  stage = ckpt.latest_meta()["drnas_stage"]
  ckpt.close()
  mask = {k: np.asarray(stage["op_mask"][k]) for k in ("normal", "reduce")}
  assert stage["stage"] == 1 and all(m.sum(-1).tolist() == [2] * 5 for m in mask.values())
  found = json.loads((first / "genotype.json").read_text())
  ops = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  for k in ("normal", "reduce"):  # the derived cell picks unpruned ops only
    for (op, j), start in zip(found[k], [0, 0, 2, 2]):
      assert mask[k][start + j][ops.index(op)], (k, op, start + j)
  # The op weights at each epoch's end (the Dirichlet's mean): epoch 0 warms up (uniform),
  # epoch 1 moves them; epoch 2 warms the second stage up, so its weights are epoch 1's
  # renormalised over the kept ops; epoch 3 moves them again.
  history = np.load(first / "alphas.npz")
  for k in ("normal", "reduce"):
    w = history[k]
    np.testing.assert_allclose(w[0], 1 / 3, atol=1e-3)
    assert np.abs(w[1] - w[0]).max() > 1e-4
    kept = w[1] * mask[k]
    np.testing.assert_allclose(w[2], kept / kept.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert np.abs(w[3] - w[2]).max() > 1e-4 and np.all(w[3][~mask[k]] == 0)
  records = [json.loads(l) for l in (first / "metrics.jsonl").read_text().splitlines()]
  assert [np.isfinite(r["hessian_max_eig"]) for r in records] == [True] * 4
  # The widened checkpoint holds 1/2 of the channels: a run resumed from it ends the same.
  second = tmp_path / "b"
  shutil.copytree(first, second)
  for step in ("6", "8"):
    shutil.rmtree(second / "checkpoints" / step)
  out = cli_helpers.run("dnas.search", *args, f"--workdir={second}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming" in out.stderr and "DrNAS: stage" not in out.stdout
  a, b = cli_helpers.final(str(first)), cli_helpers.final(str(second))
  cli_helpers.assert_same_run(a, b, steps=8)
