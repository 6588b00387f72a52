"""The maintained tools in scripts/, each run for real as a user runs it (a subprocess,
forked after the libraries load: tests/forked_cli.py) on the tiniest arguments that take
its main path, and its output checked; a tool whose main path needs what the suite lacks
gets its usage and its pure parts checked (each test says which). Probes of past questions live beside their experiments and are not tested here.
scripts/device_check.py has its own test (tests/test_device_check.py)."""

import ast
import functools
import importlib.util
import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas.latency.table import LatencyTable
from dnas.spaces import darts
from dnas.spaces.nb201 import latency as nb201_latency
from dnas.spaces.nb201.structure import Structure
from tests import cli_helpers

TOOLS = ("bench_step", "bench_input", "bench_latency", "hlo_stats", "profile_cell",
         "device_check", "compare_reference", "eagle_latency", "latency_pareto",
         "check_unchanged", "bench_compile", "bench_runtimes", "mobile_pareto",
         "bench_checkpoint")
TINY = "--config=dnas/configs/tiny.py"
# Two kinds of op (one parametric, one not): the tiny config at its cheapest compile.
TWO_OPS = "--config.model.primitives=('skip_connect','sep_conv_3x3')"


def _run(tool, *args, timeout=300):
  return cli_helpers.run_script(os.path.join("scripts", f"{tool}.py"), *args, timeout=timeout)


def _json_lines(out):
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def _finite_positive(d, *keys):
  for k in keys:
    assert isinstance(d[k], (int, float)) and math.isfinite(d[k]) and d[k] > 0, (k, d)


@functools.cache  # once: a tool may define absl flags
def _load(tool):
  spec = importlib.util.spec_from_file_location(
      f"scripts_{tool}", os.path.join(cli_helpers.ROOT, "scripts", f"{tool}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("tool", TOOLS)
def test_docstring_opens_with_a_summary_then_usage(tool):
  with open(os.path.join(cli_helpers.ROOT, "scripts", f"{tool}.py")) as f:
    lines = ast.get_docstring(ast.parse(f.read())).splitlines()
  assert lines[0].endswith(".") and len(lines[0]) <= 92, lines[0]
  assert lines[1] == "" and lines[2].startswith(f"python scripts/{tool}.py"), lines[:3]


def test_bench_step_times_a_tiny_search_step():
  (r,) = _json_lines(_run("bench_step", TINY, TWO_OPS, "--config.model.steps=1",
                          "--config.model.multiplier=1", "--steps=1", "--image=8,8,3"))
  assert r["order"] == "first" and r["batch"] == 8 and r["image"] == [8, 8, 3]
  _finite_positive(r, "compile_s", "arch_step_s", "weight_step_s", "search_step_s",
                   "images_per_s", "host_jit_flat_ms", "peak_rss_compile_gib")


def test_bench_input_reads_synthetic_cifar():
  (r,) = _json_lines(_run("bench_input", "--datasets=cifar10", "--workers=0",
                          "--batch_size=4", "--batches=2", "--examples=16"))
  assert r["dataset"] == "cifar10" and r["batch"] == 4 and r["image"] == [32, 32, 3]
  assert r["data"].startswith("synthetic png") and isinstance(r["keeps_up"], bool)
  _finite_positive(r, "images_per_s", "min_step_s", "needed_images_per_s")


def test_hlo_stats_shows_the_cpu_fast_path_only_on_cpu():
  rows = _json_lines(_run("hlo_stats", TINY, TWO_OPS, "--platforms=cpu,cuda",
                          "--image=8,8,3"))
  cpu, cuda = rows
  assert (cpu["platform"], cuda["platform"]) == ("cpu", "cuda")
  # The CPU lowering's fusion barriers and shift loops; XLA's depthwise conv elsewhere.
  assert cpu["identity_matmuls"] > 0 and cuda["identity_matmuls"] == 0
  assert cpu["slice"] > cuda["slice"] and cuda["grouped_convolution"] > 0
  _finite_positive(cpu, "ops", "dot_general")


@pytest.fixture(scope="module")
def latency_table_run(tmp_path_factory):
  """bench_latency on the tiny config: profiles a table (saved for latency_pareto), then
  times one random network, DARTS_V1 and DARTS_V2 against its predictions."""
  d = tmp_path_factory.mktemp("bench_latency")
  table, plot = str(d / "table.json"), str(d / "lat.png")
  out = _run("bench_latency", TINY, "--config.latency.batch_size=8",
             "--config.latency.repeats=3", "--random=1", "--repeats=3", "--rounds=1",
             f"--save_table={table}", f"--plot={plot}")
  return out, table, plot


def test_bench_latency_compares_predictions_with_timings(latency_table_run):
  out, table, plot = latency_table_run
  profiled, *nets, summary = _json_lines(out)
  assert profiled["profiled_entries"] > 0
  assert [n["name"] for n in nets] == ["random0", "DARTS_V1", "DARTS_V2"]
  for n in nets:
    _finite_positive(n, "predicted_ms", "measured_ms")
  assert summary["summary"] and summary["networks"] == 3 and summary["batch_size"] == 8
  assert -1 <= summary["spearman"] <= 1 and math.isfinite(summary["mape_pct"])
  assert os.path.getsize(plot) > 0 and LatencyTable.load(table).entries


def test_latency_pareto_remeasures_a_sweep(latency_table_run, tmp_path):
  """The sweep's last stage on two made-up rows (`--remeasure_only`): side-by-side timing,
  pareto_final.jsonl, the markdown table and the plot. Its searches and retrainings are
  `search_lib.run_search` and `train_lib.run_train`, run through their CLIs in
  tests/test_cli.py."""
  _, table, _ = latency_table_run
  rows = [dict(weight=w, objective=o, genotype=g.to_dict(), test_acc=a, params=p,
               predicted_ms=1.0)
          for w, o, g, a, p in [(0.0, "none", darts.DARTS_V1, 0.9, 1000),
                                (1.0, "proxyless", darts.DARTS_V2, 0.8, 900)]]
  (tmp_path / "pareto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = _run("latency_pareto", TINY, "--config.latency.batch_size=8", f"--table={table}",
             f"--out={tmp_path}", "--remeasure_only", "--rounds=1")
  assert out.returncode == 0, out.stderr[-3000:]
  final = [json.loads(l) for l in (tmp_path / "pareto_final.jsonl").read_text().splitlines()]
  assert [r["weight"] for r in final] == [0.0, 1.0]
  for r in final:
    _finite_positive(r, "measured_ms")
  assert "| 0 | 90.00 % |" in out.stdout and "1.00x" in out.stdout
  assert (tmp_path / "pareto.png").stat().st_size > 0


def test_eagle_latency_fits_a_made_up_device(tmp_path):
  # Latencies exactly of the cell model's form: the fit predicts the held-out networks.
  rng = np.random.default_rng(0)
  coef = rng.uniform(0.01, 0.2, len(nb201_latency.feature_names()))
  archs = [Structure.from_index(int(i)) for i in rng.choice(5 ** 6, 300, replace=False)]
  data = dict(source="made up", latency_ms={
      str(a): float(nb201_latency.features(a) @ coef) for a in archs})
  (tmp_path / "eagle.json").write_text(json.dumps(data))
  out_table = tmp_path / "t" / "table.json"
  (r,) = _json_lines(_run("eagle_latency", f"--data={tmp_path / 'eagle.json'}", "--train=200",
                          "--device=made-up", f"--out={out_table}"))
  assert r["train"] == 200 and r["networks"] == 100
  assert r["spearman"] > 0.95 and r["within_10_pct"] > 90, r
  assert LatencyTable.load(out_table).meta["device_kind"] == "made-up"
  assert json.loads((tmp_path / "t" / "table.report.json").read_text()) == r


def test_profile_cell_usage_and_kernel_grouping():
  """Its real run (CIFAR-10 search shapes) takes over a minute here: `--help` prints the
  usage (absl exits 1 after help), and its trace reader groups the kernels of a tiny
  jitted convolution's profile by kind."""
  out = _run("profile_cell", "--help")
  assert out.returncode == 1 and "python scripts/profile_cell.py [--wrt" in out.stdout
  f = jax.jit(lambda x, k: jnp.tanh(jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum())
  x, k = jnp.ones((32, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
  jax.block_until_ready(f(x, k))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      jax.block_until_ready(f(x, k))
    total, count = _load("profile_cell").kernel_times(d)
  assert sum(total.values()) > 0 and set(total) == set(count)
  assert not any(kind.rsplit(".", 1)[-1].isdigit() for kind in total), total


def test_compare_reference_usage_and_diff():
  """Its real run needs a torch venv and the reference checkouts (AutoDL-Projects,
  quark0/darts): `--help` prints the usage, and its difference measure is checked."""
  out = _run("compare_reference", "--help")
  assert out.returncode == 0 and "--torch_python" in out.stdout and "--cases" in out.stdout
  d = _load("compare_reference")._diff([1.0, 2.0, 4.0], [1.0, 2.5, 4.0])  # pylint: disable=protected-access
  assert d == pytest.approx(dict(max_abs=0.5, max_rel=0.2, scale=4.0), rel=1e-5)


def test_bench_compile_times_a_tiny_search_and_retraining_step():
  out = _run("bench_compile", "--cases=digits,cifar_retrain", TINY, TWO_OPS, "--repeats=1",
             "--platforms=cpu,cuda")
  lines = {d["case"]: d for d in _json_lines(out)}
  assert set(lines) == {"digits", "cifar_retrain"}, out.stdout
  for d in lines.values():
    _finite_positive(d, "trace_s", "lower_s", "compile_s", "first_call_s", "step_ms", "programs")
    ops = d["stablehlo_ops"]
    assert set(ops) == {"cpu", "cuda"} and all(n > 0 for n in ops.values())
  # The CPU fast path's shift loops exist only in the program lowered for the CPU.
  assert lines["digits"]["stablehlo_ops"]["cpu"] != lines["digits"]["stablehlo_ops"]["cuda"]


def test_bench_checkpoint_times_saves_of_a_tiny_search_state():
  (r,) = _json_lines(_run("bench_checkpoint", TINY, "--saves=2", "--interval=0"))
  _finite_positive(r, "first_save_s", "save_s", "checkpoint_bytes", "arrays")
  assert r["saves"] == 2 and r["leaves"] > r["arrays"]  # leaves stacked by shape


def test_check_unchanged_fingerprint_ignores_only_the_clock(tmp_path):
  """Its real run is two full searches (minutes): its fingerprint of a work directory is
  checked on a hand-made one; any other field, to the last bit, counts."""
  tool = _load("check_unchanged")
  (tmp_path / "genotype.json").write_text(json.dumps({"arch": "|skip_connect~0|"}))
  record = dict(epoch=0, valid_acc=0.5, wall_time=3.2)
  (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
  a = tool.fingerprint(str(tmp_path))
  assert a == dict(genotype={"arch": "|skip_connect~0|"}, metrics=[dict(epoch=0, valid_acc=0.5)])
  (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(record, wall_time=9.9)) + "\n")
  assert tool.fingerprint(str(tmp_path)) == a
  (tmp_path / "metrics.jsonl").write_text(json.dumps(dict(record, valid_acc=0.5 + 2**-52)) + "\n")
  assert tool.fingerprint(str(tmp_path)) != a


@pytest.mark.skipif(not importlib.util.find_spec("onnxruntime"),
                    reason="needs the extra dnas[onnx]")
def test_bench_runtimes_times_a_network_in_both_runtimes():
  (r,) = _json_lines(_run("bench_runtimes", "--networks=FBNet_A", "--image=16", "--rounds=1",
                          "--repeats=2"))
  assert r["network"] == "FBNet_A" and r["shape"] == [1, 16, 16, 3]
  _finite_positive(r, "jax_ms", "onnxruntime_ms", "jax_over_ort", "onnx_convert_s")
  assert r["max_abs_diff"] < 1e-4


@pytest.mark.skipif(not importlib.util.find_spec("onnxruntime"),
                    reason="needs the extra dnas[onnx]")
def test_mobile_pareto_searches_retrains_exports_and_reports(tmp_path):
  # One latency-weighted search and one random network of a tiny layout, then the report.
  tiny = ["--config.mobile.depths=(1,1)", "--config.mobile.widths=(8,16)",
          "--config.mobile.strides=(1,2)", "--config.mobile.head=16"]
  out = _run("mobile_pareto", f"--out={tmp_path}", "--weights=1", "--seeds=0", "--random=1",
             *tiny, "--config.search.epochs=2", "--config.search.arch_start_epoch=1",
             "--config.train.epochs=1", "--config.max_steps_per_epoch=2",
             "--config.latency.repeats=2", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "w1_s0" / "model.onnx").exists() and (tmp_path / "random00" /
                                                             "model.onnx").exists()
  out = _run("mobile_pareto", f"--out={tmp_path}", "--report", "--rounds=1", "--repeats=2",
             *tiny)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  assert [s["weight"] for s in report["summary"]] == [1.0] and len(report["rows"]) == 2
  assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in report["rows"])
  assert (tmp_path / "pareto.png").stat().st_size > 0
  assert "the search's table vs measured (2 networks)" in out.stdout
  assert "the table profiled now vs measured (2 networks)" in out.stdout
  assert report["fresh_table_fit"]["networks"] == 2
