"""dnas.evaluate: the measures it reports, and one run through the CLI on a table fixture
(made-up accuracies under the real protocol; no test trains the ground truth)."""

import fnmatch
import functools
import importlib.util
import itertools
import json
import os
import tomllib

import jax
import numpy as np
import pytest
from flax import nnx

from dnas.benchmarks import nb201_digits
from dnas.spaces import nb201
from dnas.spaces.nb201 import ground_truth as gt
from tests import cli_helpers


def test_expected_best_of_k_matches_brute_force():
  rng = np.random.default_rng(0)
  accs = rng.random(7)
  assert nb201_digits.expected_best_of(accs, 1) == pytest.approx(accs.mean())
  for k in (2, 3):  # every ordered k-tuple of draws, equally likely
    want = np.mean([max(t) for t in itertools.product(accs, repeat=k)])
    assert nb201_digits.expected_best_of(accs, k) == pytest.approx(want)
  assert nb201_digits.expected_best_of(accs, 10_000) == pytest.approx(accs.max())


def test_kendall_tau():
  assert nb201_digits.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert nb201_digits.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert nb201_digits.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_default_table_ships_inside_the_package():
  # The table is package data: beside the module (wherever dnas is installed), named by
  # pyproject.toml's package-data globs, and it loads under the protocol.
  here = os.path.dirname(os.path.abspath(nb201_digits.__file__))
  assert os.path.dirname(os.path.abspath(nb201_digits.DEFAULT_TABLE)) == here
  assert os.path.isfile(nb201_digits.DEFAULT_TABLE)
  with open(os.path.join(cli_helpers.ROOT, "pyproject.toml"), "rb") as f:
    globs = tomllib.load(f)["tool"]["setuptools"]["package-data"][nb201_digits.__name__]
  assert any(fnmatch.fnmatch(os.path.basename(nb201_digits.DEFAULT_TABLE), g) for g in globs)
  table = gt.GroundTruth.load(nb201_digits.DEFAULT_TABLE)
  assert len(table.sample) == 300 and table.base_seeds == (0, 1)
  assert all(a in table.results for a in table.sample)


def test_supernet_accuracies_use_each_architectures_one_hot_weights():
  net = nb201.Network(4, 1, 10, in_channels=1, rngs=nnx.Rngs(0))
  net.eval()
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  archs = [nb201.Structure.from_index(i) for i in (100, 7_000)]
  labels = [np.asarray(np.argmax(net(x, weights=w), -1)) for w in gt.one_hot(archs)]
  # Labels that agree with architecture 0 on all six images, with architecture 1 on the
  # images where the two disagree less often: accuracies are each architecture's own.
  batch = dict(image=np.asarray(x), label=labels[0], mask=np.ones(6, np.float32))
  got = nb201_digits.supernet_accuracies(net, archs, [batch])
  assert got[0] == 1.0 and got[1] == pytest.approx(np.mean(labels[1] == labels[0]))


def test_evaluate_cli_on_a_table_fixture(tmp_path):
  # The 3^6 architectures of three ops; made-up accuracies, the real protocol, so the
  # search's find is always in the table (nothing is trained) and `--train_seconds` is
  # given. Ranking 243 architectures on the supernet is mostly compute: XLA's default
  # optimisation (80 s at level 0 -> 31 s).
  ops = ("none", "skip_connect", "nor_conv_3x3")
  archs = [str(nb201.Structure(c)) for c in itertools.product(ops, repeat=6)]
  rng = np.random.default_rng(0)
  # The sample also holds one architecture with a pooling op, which the search cannot
  # find and which alone lacks seed 2: the base seeds stay 0 and 1, and the within-budget
  # comparison (`--budget_seeds=3`) averages a third seed that every find has.
  pooled = "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"
  table = gt.GroundTruth(sample=archs[::3] + [pooled])
  table.add(gt.Result(a, s, float(rng.uniform(0.1, 1.0)), 0.5, 1.0)
            for a in archs + [pooled] for s in (0, 1))
  table.add(gt.Result(a, 2, float(rng.uniform(0.1, 1.0)), 0.5, 1.0) for a in archs)
  # Made-up latencies, 95 % of them within the 2.9 ms budget; the pooled one is over it.
  measured = {a: float(ms) for a, ms in zip(archs, rng.uniform(1.0, 3.0, len(archs)))}
  measured[pooled] = 3.0
  path = str(tmp_path / "gt.json")
  table.save(path)
  runs = sum(len(r["seeds"]) for r in table.results.values())
  assert table.base_seeds == (0, 1)
  with open(tmp_path / "measured.json", "w") as f:
    json.dump({"latency_ms": measured}, f)
  config = os.path.join(cli_helpers.ROOT, "dnas", "configs", "nb201.py")
  out = cli_helpers.run(
      "dnas.evaluate", f"--config={config}", "--config.model.C=4", "--config.train.C=4",
      "--config.train.N=1", "--config.max_steps_per_epoch=3",
      f"--config.model.primitives={ops!r}".replace(" ", ""), "--config.search.epochs=1",
      "--config.search.batch_size=8", "--config.search.relaxation=gumbel",
      "--config.search.gumbel_hard=true", f"--workdir={tmp_path / 'eval'}", "--seeds=2",
      f"--ground_truth={path}", "--train_seconds=20",
      f"--measured_latency={tmp_path / 'measured.json'}", "--budget_ms=2.9", "--budget_seeds=3",
      extra_env=cli_helpers.optimised())
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
  assert [r["seed"] for r in report["runs"]] == [0, 1]
  # Nothing was trained: every find and comparison was in the table.
  assert sum(len(r["seeds"]) for r in gt.GroundTruth.load(path).results.values()) == runs
  truth = table.sample_accuracies()
  within = [a for a in archs[::3] if measured[a] <= 2.9]
  within_truth = [table.accuracy(a, [0, 1, 2]) for a in within]
  assert report["budget_seeds"] == 3 and report["runs"][0]["sample_within_budget"] == len(within)
  assert any(r["meets_budget"] for r in report["runs"])
  for r in report["runs"]:
    assert r["meets_budget"] == (measured[r["arch"]] <= 2.9)
    if not r["meets_budget"]:  # over the budget: not compared within it
      assert r["percentile_within_budget"] is None and r["test_acc_budget_seeds"] is None
      continue
    assert r["test_acc_budget_seeds"] == pytest.approx(table.accuracy(r["arch"], [0, 1, 2]))
    assert r["percentile_within_budget"] == pytest.approx(
        gt.percentile_of(within_truth, r["test_acc_budget_seeds"]))
  for r in report["runs"]:
    found = json.loads((tmp_path / "eval" / f"seed_{r['seed']}" / "genotype.json").read_text())
    assert r["arch"] == found["arch"]
    assert r["test_acc"] == pytest.approx(table.accuracy(r["arch"]))
    assert r["percentile"] == pytest.approx(table.percentile(r["test_acc"]))
    assert r["param_free_ops"] == nb201.Structure.from_string(r["arch"]).parameter_free_ops()
    assert -1.0 <= r["kendall_tau"] <= 1.0
  k = max(1, int(report["search_seconds_mean"] // 20))
  assert report["random_k"] == k
  assert report["random_best_of_k"] == pytest.approx(nb201_digits.expected_best_of(truth, k))
  assert report["sample_size"] == len(archs[::3]) + 1
  assert "found: test_acc" in out.stdout and "random: best of K=" in out.stdout
  assert report["top_within_budget"] == sum(
      r["meets_budget"] and r["percentile_within_budget"] >= 90 for r in report["runs"])
  assert report["random_within_budget"] == nb201_digits.random_search_within_budget(
      table, within, (0, 1, 2), k)
  assert f"random search at the same cost (the best validation accuracy of K={k} " in out.stdout


def test_random_search_within_budget_keeps_the_best_run_and_measures_it_on_the_others():
  table = gt.GroundTruth()
  # Ten networks whose every run scores the same (validation = test): random search finds
  # the truly best of its k draws; one draw is a random pick.
  table.add(gt.Result(f"n{i}", s, i / 10, i / 10, 1.0) for i in range(10) for s in (0, 1))
  within = [f"n{i}" for i in range(10)]
  one = nb201_digits.random_search_within_budget(table, within, (0, 1), 1, draws=20_000)
  assert one["k"] == 1 and one["percentile_mean"] == pytest.approx(50.0, abs=1.0)
  assert one["top_rate"] == pytest.approx(0.1, abs=0.01)  # only the best is in the top 10 %
  many = nb201_digits.random_search_within_budget(table, within, (0, 1), 200)
  assert many["top_rate"] == 1.0 and many["percentile_mean"] == 95.0
  # The kept run's luck stays out of the measurement: the lucky network (1.0 on seed 0,
  # 0.0 on seed 1) always wins the selection and is measured by seed 1 alone, below the
  # steady one (0.5 twice; a tie with itself: the 25th percentile of two), though both
  # average 0.5 over the two seeds.
  table = gt.GroundTruth()
  table.add([gt.Result("lucky", 0, 1.0, 1.0, 1.0), gt.Result("lucky", 1, 0.0, 0.0, 1.0),
             gt.Result("steady", 0, 0.5, 0.4, 1.0), gt.Result("steady", 1, 0.5, 0.4, 1.0)])
  got = nb201_digits.random_search_within_budget(table, ["lucky", "steady"], (0, 1), 50)
  assert got == dict(k=50, percentile_mean=25.0, top_rate=0.0)
  # Selection by validation, measurement by test: "a" validates best on seed 0 (0.9) and
  # is measured on seeds 1 and 2 (0.8), its own 3-seed mean (0.6) replaced by that, so it
  # ties with itself above "b" (0.7): the 75th percentile, not the 100th.
  table = gt.GroundTruth()
  table.add(gt.Result("a", s, t, v, 1.0) for s, t, v in zip(range(3), (0.2, 0.8, 0.8),
                                                             (0.9, 0.0, 0.0)))
  table.add(gt.Result("b", s, 0.7, 0.5, 1.0) for s in range(3))
  got = nb201_digits.random_search_within_budget(table, ["a", "b"], (0, 1, 2), 50)
  assert got == dict(k=50, percentile_mean=75.0, top_rate=0.0)


def test_budget_facts_rank_a_find_among_the_sample_within_the_budget():
  sample, truth = ["a", "b", "c", "d"], {"a": 0.5, "b": 0.7, "c": 0.9}
  measured = {"a": 1.0, "b": 5.0, "c": 2.0, "x": 2.5}
  within = nb201_digits.within_budget(sample, measured, 3.0)
  assert within == ["a", "c"] and nb201_digits.within_budget(sample, measured, 0) == sample[:3]
  within_truth = [truth[a] for a in within]
  facts = nb201_digits._budget_facts("x", 0.8, within_truth, measured, 3.0)  # pylint: disable=protected-access
  assert facts["meets_budget"] and facts["measured_ms"] == 2.5
  assert facts["sample_within_budget"] == 2 and facts["percentile_within_budget"] == 50.0
  facts = nb201_digits._budget_facts("x", 0.8, within_truth, measured, 2.0)  # pylint: disable=protected-access
  assert not facts["meets_budget"] and facts["percentile_within_budget"] is None
  report = dict(runs=[dict(test_acc=0.8, percentile=50.0, measured_ms=2.5)], test_acc_mean=0.8,
                test_acc_std=0.0, percentile_mean=50.0, param_free_ops_mean=2.0,
                kendall_tau_mean=0.1, random_k=3, search_seconds_mean=100.0,
                train_seconds=8.0, random_best_of_k=0.95, sample_median=0.7,
                sample_best=0.9, sample_size=3, seed_noise=0.01)
  assert "latency" not in nb201_digits.format_report(report)
  report.update(budget_ms=2.0, meets_budget=0, percentile_within_budget_mean=50.0,
                budget_seeds=4, within_budget_seed_noise=0.005)
  report["runs"][0].update(percentile_within_budget=None, sample_within_budget=2)
  report["percentile_within_budget_mean"] = None
  assert ("latency: 0 of 1 finds meet 2.0 ms (measured: 2.500 ms); percentile among the 2 "
          "sampled within it - (mean -; 4 training seeds, seed noise 0.50 %)"
          ) in nb201_digits.format_report(report)
  report["runs"][0].update(percentile_within_budget=50.0)
  report.update(meets_budget=1, percentile_within_budget_mean=50.0)
  assert "sampled within it 50 (mean 50.0; 4" in nb201_digits.format_report(report)
  assert "top 10 % within it" not in nb201_digits.format_report(report)  # an older report
  report.update(top_within_budget=0, random_within_budget=dict(k=3, percentile_mean=61.25,
                                                                top_rate=0.19))
  assert ("  top 10 % within it: 0 of 1 finds; random search at the same cost (the best "
          "validation accuracy of K=3 networks within it, each trained once): percentile 61.2 "
          "on average, top 10 % 19 % of the time") in nb201_digits.format_report(report)


def test_evaluate_cli_bad_budget_is_one_line(tmp_path):
  out = cli_helpers.run("dnas.evaluate", "--budget_ms=3", "--seeds=1")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip() == ("dnas: error: --budget_ms must be > 0 and come with "
                                "--measured_latency, got 3.0")
  out = cli_helpers.run("dnas.evaluate", "--budget_seeds=1", "--seeds=1")
  assert out.returncode == 2 and out.stderr.strip() == (
      "dnas: error: --budget_seeds must be >= 2 and come with --measured_latency, got 1")
  measured = tmp_path / "measured.json"
  measured.write_text(json.dumps({"latency_ms": {"|skip_connect~0|+|...": 1.0}}))
  out = cli_helpers.run("dnas.evaluate", "--budget_seeds=4", "--seeds=1",
                        f"--measured_latency={measured}", f"--workdir={tmp_path / 'eval'}")
  assert out.returncode == 2 and out.stderr.strip() == (
      "dnas: error: budget_seeds=4 needs a latency budget (--budget_ms, "
      "latency.limit_ms or latency.target_ms > 0), got 0.0")


@functools.cache  # once: the script defines absl flags
def _resolution_script():
  spec = importlib.util.spec_from_file_location(
      "resolution", os.path.join(cli_helpers.ROOT, "experiments", "nb201_digits",
                                "ground_truth_resolution.py"))
  resolution = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(resolution)
  return resolution


def test_ground_truth_resolution_measures():
  resolution = _resolution_script()
  rng = np.random.default_rng(0)
  # Two seeds that agree exactly replicate every top-q label; independent ones by chance.
  same = np.repeat(rng.random((200, 1)), 2, 1)
  assert resolution.replication(same, 10) == 1.0
  assert resolution.replication(rng.random((4000, 2)), 10) == pytest.approx(0.1, abs=0.03)
  # Without noise a perfect search is always at the top; with noise only, at chance.
  rate = functools.partial(resolution.perfect_search_rate, n_sample=30, n_seeds=2, top=10.0,
                           draws=4000, rng=rng)
  assert rate(0.01, 0.0) == 1.0
  assert rate(1e-6, 1.0) == pytest.approx(3 / 30, abs=0.02)  # ranked 1st-3rd of 30
  assert rate(0.004, 0.0075) < rate(0.004, 0.0075, n_seeds=24) < 1.0
  # Random search keeping the best of k single runs: a random pick for k=1 or pure noise,
  # the truly best for k = all and no noise; between them, more draws help.
  search = functools.partial(resolution.random_search_rate, n_sample=30, n_seeds=24,
                             top=10.0, draws=4000, rng=rng)
  assert search(0.004, 0.0075, k=1) == pytest.approx(0.1, abs=0.02)
  assert search(1e-6, 1.0, k=10) == pytest.approx(0.1, abs=0.02)
  assert search(0.01, 1e-9, k=30) == 1.0
  assert search(0.004, 0.0075, k=1) < search(0.004, 0.0075, k=10) < 1.0


def test_best_of_searches_keeps_the_best_validated_find():
  resolution = _resolution_script()
  table = gt.GroundTruth()
  table.add(gt.Result("a", s, 0.9, 0.9, 1.0) for s in (0, 1))  # the best, validates best
  table.add(gt.Result("b", s, 0.1, 0.1, 1.0) for s in (0, 1))
  table.add(gt.Result(f"c{i}", s, 0.5, 0.5, 1.0) for i in range(8) for s in (0, 1))
  within = ["a", "b"] + [f"c{i}" for i in range(8)]
  means = np.asarray([table.accuracy(a, [0, 1]) for a in within])
  rate = functools.partial(resolution.best_of_searches_rate, table=table, seeds=[0, 1],
                           within=within, within_means=means, top=10.0, draws=2000,
                           rng=np.random.default_rng(0))
  # Two searches that found "a" and "b": one of them at random, or always "a" (the 95th
  # percentile, itself a tie); over the budget, "a" still validates best and is a miss.
  assert rate(["a", "b"], [True, True], repeats=1) == pytest.approx(0.5, abs=0.05)
  assert rate(["a", "b"], [True, True], repeats=2) == 1.0
  assert rate(["a", "b"], [False, True], repeats=2) == 0.0


def test_ground_truth_resolution_compares_an_evaluation(capsys):
  resolution = _resolution_script()
  runs = [dict(meets_budget=True, percentile_within_budget=p) for p in (98.3, 90.0, 63.3)]
  runs.append(dict(meets_budget=False, percentile_within_budget=None))  # over: a miss
  resolution.compare_evaluation("evaluation.json", dict(runs=runs), {"a random pick": 0.1}, 10.0)
  out = capsys.readouterr().out
  # 2 of 4: exact (Clopper-Pearson) interval 0.07-0.93; P(X >= 2 | 4, 0.1) two-sided 0.052
  assert "on 2 of 4 search seeds (0.50, 95 % interval 0.07-0.93)" in out, out
  assert "a random pick 0.10 (p 0.052)" in out, out
