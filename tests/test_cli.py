"""The entry points as a user runs them: a tiny search whose genotype dnas.train accepts,
and user mistakes that exit 2 with one line and no traceback."""

import itertools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dnas import cli, search_lib
from dnas.latency.table import device_stamp
from dnas.configs import tiny
from dnas.spaces import darts, nb201
from tests import cli_helpers
from tests.spaces.nb201 import nats_fixture
from tests.test_plot_export import read_events

TINY = cli_helpers.TINY
PROBE = os.path.join(cli_helpers.ROOT, "tests", "configs", "selection_probe.py")
# Four kinds of op (as cli_helpers.FAST): compile time grows with the ops.
FAST_OPS = "--config.model.primitives=('none','max_pool_3x3','skip_connect','sep_conv_3x3')"


def _run(module, *args, timeout=600):
  return cli_helpers.run(module, *args, "--progress=false", timeout=timeout)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  # The tiny config, with a selection rule that probes `dnas.selection.Context`.
  workdir = tmp_path_factory.mktemp("search")
  out = cli_helpers.run("dnas.search", f"--config={PROBE}", f"--workdir={workdir}",
                        "--config.search.epochs=2", FAST_OPS, "--progress=false",
                        extra_env=dict(DNAS_PROBE_OUT=str(workdir / "probe.json")))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_search_writes_genotype_metrics_and_plot(searched):
  g = darts.load_genotype(searched / "genotype.json")
  assert len(g.normal) == 4 and g.normal_concat == (2, 3)  # tiny: steps=2, multiplier=2
  records = [json.loads(l) for l in (searched / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [0, 1]
  for key in ("w_loss", "w_acc", "a_loss", "a_acc", "valid_acc", "alpha_entropy_normal",
              "alpha_entropy_reduce", "genotype", "wall_time", "lr"):
    assert key in records[-1]
  assert darts.Genotype.from_dict(records[-1]["genotype"]) == g
  # The selection rule ran after the last epoch with a working context: it evaluated the
  # final supernet (the last record's validation accuracy) and trained it two steps on.
  probe = json.loads((searched / "probe.json").read_text())
  assert probe["before"][1] == pytest.approx(records[-1]["valid_acc"])
  assert probe["params_changed"] and probe["step"] == 2 * 3 + 2
  assert 0 <= probe["after"][1] <= 1 and probe["after"] != probe["before"]
  assert (searched / "alphas.png").stat().st_size > 10_000
  for kind in ("normal", "reduce"):  # drawings of the final cells
    assert (searched / f"genotype_{kind}.png").stat().st_size > 10_000
    assert (searched / f"genotype_{kind}.svg").exists()
  # TensorBoard: the same per-epoch numbers, and every edge's op weights.
  events = read_events(searched / "tensorboard" / "search")
  steps = [s for s, _ in events["search/valid_acc"]]
  assert len(steps) == 2 and steps[0] < steps[1]
  assert [v for _, v in events["search/valid_acc"]] == pytest.approx(
      [r["valid_acc"] for r in records])
  assert len([t for t in events if t.startswith("op_weights/normal/")]) == 5 * 4  # edges x ops


def test_train_accepts_searched_genotype(searched, tmp_path):
  out = _run("dnas.train", f"--config={TINY}", f"--genotype={searched / 'genotype.json'}",
             f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "train_result.json").read_text())
  assert 0.0 <= result["test_acc"] <= 1.0 and result["params"] > 0
  assert os.path.isdir(result["checkpoint"])
  assert len(read_events(tmp_path / "tensorboard" / "train")["train/valid_acc"]) == 1


def test_pc_darts_gumbel_latency_search_warms_up_then_searches(tmp_path):
  # PC-DARTS on the tiny config (K=4 partial channels, edge normalisation, the
  # architecture frozen for the first epoch as the paper freezes 15 of 50), with hard
  # Gumbel sampling and the latency term on a table measured at the start.
  out = _run("dnas.search", f"--config={TINY}", f"--workdir={tmp_path}", FAST_OPS,
             "--config.method=pc_darts", "--config.search.epochs=2",
             "--config.search.arch_start_epoch=1", "--config.search.relaxation=gumbel",
             "--config.search.gumbel_hard=true", "--config.latency.objective=proxyless",
             "--config.latency.weight=0.1", "--config.latency.repeats=3")
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert "a_loss" not in records[0] and "w_loss" in records[0]
  assert "a_loss" in records[1] and records[1]["a_objective"] > records[1]["a_loss"]
  # GDAS's validation accuracy: the architecture steps' sampled networks (its reference's
  # number), not the softmax mixture it never trains; the warm-up epoch has only that.
  assert (records[1]["valid_acc"], records[1]["valid_loss"]) == (records[1]["a_acc"],
                                                                 records[1]["a_loss"])
  assert 0 <= records[0]["valid_acc"] <= 1
  assert records[1]["a_latency_ms"] > 0 and records[1]["predicted_latency_ms"] > 0
  assert (tmp_path / "latency_table.json").exists()
  # Nothing moved the alphas in the warm-up epoch: still the supernet's initial ones.
  config = tiny.get_config()
  config.method = "pc_darts"
  config.search.update(relaxation="gumbel", gumbel_hard=True)
  config.model.primitives = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
  net = search_lib.make_supernet(config, 10, 1)
  history = np.load(tmp_path / "alphas.npz")["normal"]
  np.testing.assert_allclose(history[0], jax.nn.softmax(net.alphas_normal.get_value()), atol=1e-7)
  assert np.abs(history[1] - history[0]).max() > 1e-4
  assert darts.load_genotype(tmp_path / "genotype.json") == darts.Genotype.from_dict(
      records[1]["genotype"])


USER_ERRORS = [
    ("dnas.search", ["--config.method=enas"], "method 'enas' is unknown; valid: darts, pc_darts"),
    ("dnas.search", ["--config.method=pc_darts", "--config.model.pc_k=3"],
     "model.pc_k=3 must divide model.C=4"),
    ("dnas.search", ["--config.search.arch_start_epoch=1"],
     "search.arch_start_epoch (1) must be < search.epochs (1)"),
    ("dnas.search", ["--config.latency.objective=proxyless", "--config.latency.weight=-1"],
     "latency.weight must be a number >= 0, got -1"),
    ("dnas.search", ["--config.latency.objective=speed"], "latency.objective 'speed' is unknown"),
    ("dnas.search", ["--config.latency.objective=target", "--config.latency.weight=1"],
     "latency.target_ms must be > 0 for latency.objective=target"),
    ("dnas.search", ["--config.latency.objective=proxyless", "--config.latency.weight=1",
                     "--config.latency.table=/nonexistent/table.json"],
     "cannot read latency table /nonexistent/table.json"),
    ("dnas.search", ["--config.search.w_lr=0"], "search.w_lr must be a positive number, got 0"),
    ("dnas.search", ["--config.search.a_lr=-1"], "search.a_lr must be a positive number, got -1"),
    ("dnas.search", ["--config.search.epochs=0"], "search.epochs must be a positive integer, got 0"),
    ("dnas.search", ["--config.search.order=third"], "search.order 'third' is unknown"),
    ("dnas.search", ["--config.search.programs=many"], "search.programs 'many' is unknown"),
    ("dnas.search", ["--config.search.nope=1"], "nope"),
    ("dnas.search", ["--config.model.primitives=('max_pool_3x3','conv_9x9')"],
     "unknown op 'conv_9x9'; valid ops: none, max_pool_3x3"),
    ("dnas.search", ["--config.data.name=mnist"], "data.name 'mnist' is unknown"),
    ("dnas.search", ["--config.dtype=float16"],
     "dtype 'float16' is unknown; valid: float32, bfloat16"),
    ("dnas.search", ["--config.data.name=cifar10", "--config.data.data_dir=/nonexistent"],
     "data set 'cifar10' (cifar10) is not prepared in /nonexistent: run python -m "
     "dnas.data.prepare cifar10 --data_dir=/nonexistent"),
    ("dnas.search", ["--config=does/not/exist.py"], "exist.py"),
    ("dnas.train", ["--genotype=/nonexistent/genotype.json"],
     "cannot read architecture file /nonexistent/genotype.json: No such file or directory; "
     "give a JSON file written by python -m dnas.search or a published name (NASNet, "),
    ("dnas.search", ["--config.space=nb101"], "space 'nb101' is unknown; valid: darts, nb201"),
    ("dnas.search", ["--config=dnas/configs/nb201.py",  # relative: the CLI runs in the root
                     "--config.latency.objective=proxyless", "--config.latency.weight=1"],
     "space nb201 takes its latency from latency.table"),
    ("dnas.train", ["--config.train.epochs=-3", "--genotype=x.json"],
     "train.epochs must be a positive integer, got -3"),
    ("dnas.train", [], "--genotype is required"),
    ("dnas.search", ["--config.method=proxyless"],
     "method proxyless's binary gates run in the mobile space only"),
    ("dnas.train", ["--config=dnas/configs/mobile_digits.py", "--genotype=FBNet_Z"],
     "cannot read architecture file FBNet_Z"),
    ("dnas.search", ["--config=dnas/configs/mobile_digits.py", "--config.mobile.family=mnas"],
     "mobile.family 'mnas' is unknown; valid: proxyless, fbnet"),
    ("dnas.search", ["--workdir=gs://bucket/run"],
     "--workdir gs://bucket/run: a URL is not supported; give a local or mounted path"),
    ("dnas.train", ["--genotype=DARTS_V2", "--workdir=gs://bucket/train"],
     "--workdir gs://bucket/train: a URL is not supported"),
]


# As users type them, with the default config (no --config): ml_collections applies these
# overrides while the flag is defined, before the entry point runs.
DEFAULT_CONFIG = "(default config)"
USER_ERRORS += [
    ("dnas.search", [DEFAULT_CONFIG, "--config.epochs=3"],
     "unknown config key epochs in --config.epochs=3"),
    ("dnas.search", [DEFAULT_CONFIG, "--config.search.epochs=abc"],
     "--config.search.epochs=abc: invalid literal for int()"),
    ("dnas.search", [DEFAULT_CONFIG, "--config.search.epochs=0"],
     "search.epochs must be a positive integer, got 0"),
    ("dnas.train", [DEFAULT_CONFIG, "--config.train.nope=1", "--genotype=DARTS_V2"],
     "unknown config key nope"),
]


@pytest.mark.parametrize("case", range(len(USER_ERRORS)),
                         ids=[f"{m}-{' '.join(a)}" for m, a, _ in USER_ERRORS])
def test_user_errors_exit_2_with_one_line(case):
  module, args, message = USER_ERRORS[case]
  if DEFAULT_CONFIG in args:
    args = [a for a in args if a != DEFAULT_CONFIG]
  elif not any(a.startswith("--config=") for a in args):
    args = [f"--config={TINY}", *args]
  out = _run(module, *args)
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("dnas: error: "), out.stderr[-2000:]
  assert message in lines[0]
  assert "Traceback" not in out.stderr


CACHE_SCRIPT = """
import sys, warnings
import jax, jax.numpy as jnp
from dnas import cli
warnings.simplefilter("error")  # JAX warns on a failed cache write
cli.enable_compilation_cache(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(float(jax.jit(lambda x: jnp.sum(x * 2))(jnp.arange(3.0))))
"""


def test_compile_cache_drops_entries_without_access_time(tmp_path):
  # An entry without its access time (a process killed between JAX's two writes, or a
  # writer without the bound) made every later write to the bounded cache fail.
  cache = tmp_path / "cache"
  cache.mkdir()
  f, g = "jit_f-" + "0" * 64, "jit_g-" + "1" * 64
  (cache / f"{f}-cache").write_bytes(b"half written")
  (cache / f"{g}-cache").write_bytes(b"entry")
  (cache / f"{g}-atime").write_bytes((1).to_bytes(8, "little"))
  out = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(cache)], cwd=cli_helpers.ROOT,
                       env=cli_helpers.env(cache=""), capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0 and out.stdout.strip() == "6.0", out.stderr[-3000:]
  names = set(os.listdir(cache))
  assert f"{f}-cache" not in names and f"{g}-cache" in names
  written = {n[:-len("-cache")] for n in names if n.endswith("-cache")} - {g}
  assert written and all(f"{k}-atime" in names for k in written), names  # JAX's own entries
  assert cli.drop_unfinished_cache_entries(str(cache)) == []


def test_help_prints_the_usage_and_flags():
  # absl's help flags: the entry point's docstring and its flags on stdout (absl exits 1).
  for module, flag in (("search", "--help"), ("train", "--helpfull")):
    out = cli_helpers.run(f"dnas.{module}", flag)
    assert out.returncode == 1 and f"python -m dnas.{module}" in out.stdout, out
    assert "--workdir" in out.stdout and "Traceback" not in out.stderr


_NO_PROFILE_CONFIG = """
from dnas import spaces
from dnas.configs import nb201
from dnas.spaces.nb201.space import NB201Space


class NoProfile(NB201Space):
  name = "no_profile"
  latency_profile = None


spaces.register(NoProfile())


def get_config():
  c = nb201.get_config()
  c.space = "no_profile"
  return c
"""


def test_latency_profile_of_a_space_that_cannot_measure_exits_2(tmp_path):
  config = tmp_path / "no_profile.py"
  config.write_text(_NO_PROFILE_CONFIG)
  out = cli_helpers.run("dnas.latency", "profile", f"--config={config}",
                        f"--out={tmp_path / 'table.json'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip() == ("dnas: error: space no_profile cannot measure a latency table "
                                "(its space has no latency_profile); give the search a table "
                                "made elsewhere")


def test_latency_table_lacking_an_entry_exits_2(tmp_path):
  table = {"format": "dnas-latency-table/1", "entries": {},
           "meta": {**device_stamp(), "batch_size": 64, "dtype": "float32", "unit": "ms",
                    "dispatch_ms": 0.01}}  # this machine's stamp: refused for the entry
  path = tmp_path / "table.json"
  path.write_text(json.dumps(table))
  out = _run("dnas.search", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
             "--config.latency.objective=proxyless", "--config.latency.weight=1",
             f"--config.latency.table={path}")
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "the latency table has no entry '" in lines[0], lines


def test_latency_profile_then_predict(tmp_path):
  ops = "--config.model.primitives=('none','max_pool_3x3','skip_connect','sep_conv_3x3')"
  table = tmp_path / "table.json"
  out = cli_helpers.run("dnas.latency", "profile", f"--config={TINY}", ops,
                        "--config.latency.repeats=3", f"--out={table}")
  assert out.returncode == 0, out.stderr[-3000:]
  meta = json.loads(table.read_text())["meta"]
  assert meta["batch_size"] == 64 and meta["backend"] == "cpu"
  g = darts.Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2),
                             ("sep_conv_3x3", 0)], normal_concat=[2, 3],
                     reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                             ("max_pool_3x3", 1)], reduce_concat=[2, 3])
  darts.save_genotype(g, tmp_path / "g.json")
  out = cli_helpers.run("dnas.latency", "predict", f"--config={TINY}", f"--table={table}",
                        f"--genotype={tmp_path / 'g.json'}", "--measure")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["predicted_ms"] > 0 and result["measured_ms"] > 0
  out = cli_helpers.run("dnas.latency", "nonsense", f"--config={TINY}")
  assert out.returncode == 2
  assert out.stderr.strip() == ("dnas: error: a command is required, one of: profile, "
                                "calibrate, predict; got nonsense")


def test_bad_genotype_file_exits_2(tmp_path):
  bad = tmp_path / "g.json"
  d = darts.DARTS_V2.to_dict()
  d["normal"][3] = ["sep_conv_3x3", 4]
  bad.write_text(json.dumps(d))
  out = _run("dnas.train", f"--config={TINY}", f"--genotype={bad}")
  assert out.returncode == 2
  assert out.stderr.strip() == (f"dnas: error: {bad}: normal edge 3: node 3 cannot read state 4; "
                                f"allowed inputs are 0..2")


def test_nb201_search_then_train(tmp_path):
  # NAS-Bench-201 through the CLI: a one-epoch search (GDAS: hard Gumbel samples, each
  # edge running its sampled op) writes the benchmark's string under "arch", looks each
  # epoch's architecture up in a NATS-Bench file (a fixture in the package's format over
  # the 3^6 architectures of three ops), and dnas.train retrains that TinyNetwork.
  ops = ("none", "skip_connect", "nor_conv_3x3")
  archs = [str(nb201.Structure(c)) for c in itertools.product(ops, repeat=6)]
  bench = nats_fixture.write(str(tmp_path / "tss"), archs)
  config = os.path.join(cli_helpers.ROOT, "dnas", "configs", "nb201.py")
  tiny = [f"--config={config}", "--config.model.C=4", "--config.train.C=4",
          "--config.train.N=1", "--config.max_steps_per_epoch=3",
          f"--config.model.primitives={ops!r}".replace(" ", "")]
  out = cli_helpers.run("dnas.search", *tiny, f"--workdir={tmp_path}",  # with progress lines
                        "--config.search.epochs=1", "--config.search.batch_size=8",
                        "--config.search.relaxation=gumbel", "--config.search.gumbel_hard=true",
                        f"--config.nb201.benchmark={bench}")
  assert out.returncode == 0, out.stderr[-3000:]
  arch = json.loads((tmp_path / "genotype.json").read_text())["arch"]
  parsed = nb201.Structure.from_string(arch)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["genotype"] == {"arch": arch} and "alpha_entropy_cell" in records[-1]
  assert records[-1]["param_free_ops"] == parsed.parameter_free_ops()
  for dataset in ("cifar10", "cifar100", "ImageNet16-120"):
    want = sum(nats_fixture.accuracy(archs.index(arch), dataset, "200", s)
               for s in nats_fixture.SEEDS) / 2
    assert records[-1][f"nb201_{dataset}_test_acc"] == pytest.approx(want)
  assert f"nb201_cifar10_test_acc {records[-1]['nb201_cifar10_test_acc']:.2f}" in out.stdout
  out = _run("dnas.train", *tiny, f"--genotype={tmp_path / 'genotype.json'}",
             f"--workdir={tmp_path}", "--config.train.epochs=1", "--config.train.batch_size=16")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "train_result.json").read_text())
  assert result["space"] == "nb201" and result["genotype"] == {"arch": str(parsed)}
  assert 0.0 <= result["test_acc"] <= 1.0


def test_mobile_search_with_binary_gates_then_train(tmp_path):
  # ProxylessNAS's space and binary gates through the CLI, tiny: one layer per stage (a
  # residual one, whose candidates include zero, and a stride-2 one), one warm-up epoch
  # then one with architecture steps; dnas.train retrains the find.
  config = os.path.join(cli_helpers.ROOT, "dnas", "configs", "mobile_digits.py")
  tiny = [f"--config={config}", "--config.mobile.depths=(1,1)", "--config.mobile.widths=(8,16)",
          "--config.mobile.strides=(1,2)", "--config.mobile.head=16",
          "--config.max_steps_per_epoch=2"]
  out = _run("dnas.search", *tiny, f"--workdir={tmp_path}", "--config.search.epochs=2",
             "--config.search.arch_start_epoch=1", "--config.search.batch_size=8")
  assert out.returncode == 0, out.stderr[-3000:]
  found = json.loads((tmp_path / "genotype.json").read_text())
  assert found["family"] == "proxyless" and len(found["layers"]) == 2
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert "a_loss" in records[-1] and "alpha_entropy_residual" in records[-1]
  out = _run("dnas.train", *tiny, f"--genotype={tmp_path / 'genotype.json'}",
             f"--workdir={tmp_path}", "--config.train.epochs=1", "--config.train.batch_size=16")
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "train_result.json").read_text())["params"] > 0
