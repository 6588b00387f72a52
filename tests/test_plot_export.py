"""Seeing and shipping what was found: cell drawings, TensorBoard summaries, and the
trained network's Orbax checkpoint and `jax.export` file."""

import glob
import importlib.util
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tensorboardX.proto import event_pb2

from dnas import checkpoint, export, summaries, train_lib
from dnas.spaces.darts import draw
from dnas.configs import tiny
from dnas.data.pipeline import dataset_info
from dnas.spaces import darts
from tests import cli_helpers


@pytest.mark.parametrize("name", sorted(darts.GENOTYPES))
def test_cell_graph_is_the_genotype(name):
  g = darts.GENOTYPES[name]
  for kind in ("normal", "reduce"):
    pairs, concat = getattr(g, kind), getattr(g, f"{kind}_concat")
    nodes, edges = draw.cell_graph(g, kind)
    steps = len(pairs) // 2
    assert [n for n, _ in nodes] == ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)] + ["c_{k}"]
    states = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    op_edges = [e for e in edges if e[2]]
    # One labelled edge per genotype pair, into its node, from the state it reads.
    assert op_edges == [(states[j], str(p // 2), op) for p, (op, j) in enumerate(pairs)]
    assert sorted(e[0] for e in edges if not e[2]) == sorted(states[c] for c in concat)
    assert all(e[1] == "c_{k}" for e in edges if not e[2])


def test_plot_cli_draws_png_and_svg(tmp_path):
  g = darts.DARTS_V1
  darts.save_genotype(g, tmp_path / "genotype.json")
  out = cli_helpers.run("dnas.plot", str(tmp_path / "genotype.json"))
  assert out.returncode == 0, out.stderr[-2000:]
  for kind in ("normal", "reduce"):
    assert (tmp_path / f"genotype_{kind}.png").stat().st_size > 10_000
    svg = (tmp_path / f"genotype_{kind}.svg").read_text()
    # Every op label and node name is text in the SVG (matplotlib writes glyph paths
    # with the string in a comment).
    for op, _ in getattr(g, kind):
      assert op in svg
  (tmp_path / "file").write_text("")
  for args in ([str(tmp_path / "missing.json")],
               ["DARTS_V2", f"--out={tmp_path / 'file' / 'x'}"]):  # a file where a folder goes
    bad = cli_helpers.run("dnas.plot", *args)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert len(bad.stderr.strip().splitlines()) == 1


def read_events(logdir):
  """{tag: [(step, value)]} from TensorBoard event files (TFRecords), read as TensorBoard
  does: files in name order, and a SessionLog START at step s drops the events read so
  far at steps >= s (a restarted run's `purge_step`)."""
  out = {}
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
      n, = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        out = {t: [(s, v) for s, v in sv if s < event.step] for t, sv in out.items()}
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_summaries_scalars_and_op_weights(tmp_path):
  s = summaries.Summaries(str(tmp_path))
  w = np.random.default_rng(0).dirichlet(np.ones(3), size=2)
  s.scalars(7, {"w_loss": 1.25, "genotype": {"x": 1}, "flag": True}, "search")
  s.op_weights(7, "normal", w, ("none", "skip_connect", "sep_conv_3x3"))
  s.close()
  events = read_events(tmp_path)
  assert events["search/w_loss"] == [(7, 1.25)]
  assert "search/genotype" not in events and "search/flag" not in events
  assert events["op_weights/normal/e01/skip_connect"] == [(7, pytest.approx(w[1, 1]))]
  assert len([t for t in events if t.startswith("op_weights/")]) == 6
  # A resumed run (purge_step = checkpoint step + 1) replaces what came after step 7.
  s = summaries.Summaries(str(tmp_path), purge_step=8)
  s.scalars(8, {"w_loss": 0.5}, "search")
  s.close()
  assert read_events(tmp_path)["search/w_loss"] == [(7, 1.25), (8, 0.5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny DARTS_V2 network with random weights and BatchNorm statistics, saved as
  dnas.train saves it."""
  config = tiny.get_config()
  info = dataset_info("digits")
  net = train_lib.build_network(config, darts.DARTS_V2, info, nnx.Rngs(0))
  rng = np.random.default_rng(1)
  for path, v in nnx.to_flat_state(nnx.state(net, nnx.BatchStat)):
    v.set_value(jnp.asarray(rng.uniform(0.5, 1.5, v.get_value().shape), jnp.float32))
  directory = tmp_path_factory.mktemp("train") / "trained"
  checkpoint.save_model(str(directory), nnx.state(net), genotype=darts.DARTS_V2.to_dict(),
                        config=config.to_dict())
  net.eval()
  return directory, net


def test_trained_checkpoint_rebuilds_the_network(trained):
  directory, net = trained
  loaded, config, genotype, _ = export.load_trained(str(directory))
  assert genotype == darts.DARTS_V2 and config.train.C == tiny.get_config().train.C
  x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(loaded(x)[0], net(x)[0])


def test_export_cli_round_trip(trained, tmp_path):
  directory, net = trained
  out = tmp_path / "model.jax_export"
  res = cli_helpers.run("dnas.export", f"--trained={directory}", f"--out={out}", "--batch=4",
                        "--repeats=5")
  assert res.returncode == 0, res.stderr[-2000:]
  assert "measured latency" in res.stdout
  meta = json.loads((tmp_path / "model.jax_export.json").read_text())
  assert meta["input_shape"] == [4, 8, 8, 1] and meta["classes"] == 10
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 8, 8, 1)), jnp.float32)
  np.testing.assert_allclose(exported.call(x), net(x)[0], rtol=1e-5, atol=1e-5)
  # The ONNX model (extra dnas[onnx]) of the same network, reloaded in ONNX Runtime.
  if importlib.util.find_spec("onnxruntime"):
    import onnxruntime  # pylint: disable=import-outside-toplevel
    res = cli_helpers.run("dnas.export", f"--trained={directory}", "--format=onnx",
                          f"--out={tmp_path / 'model.onnx'}", "--batch=4", "--repeats=5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "in ONNX Runtime" in res.stdout
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"images": np.asarray(x)})[0], net(x)[0],
                               rtol=1e-4, atol=1e-5)
    bad = cli_helpers.run("dnas.export", f"--trained={directory}", "--format=onnx",
                          "--platforms=cuda")
    assert bad.returncode == 2 and "--platforms is for --format=jax" in bad.stderr
  # The TFLite model (extra dnas[tflite] and litert-converter), reloaded in LiteRT.
  if importlib.util.find_spec("litert_converter") and importlib.util.find_spec("ai_edge_litert"):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
    res = cli_helpers.run("dnas.export", f"--trained={directory}", "--format=tflite",
                          f"--out={tmp_path / 'model.tflite'}", "--batch=4", "--repeats=5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "in LiteRT" in res.stdout
    runner = Interpreter(model_path=str(tmp_path / "model.tflite")).get_signature_runner()
    np.testing.assert_allclose(runner(images=np.asarray(x))["logits"], net(x)[0], rtol=1e-4,
                               atol=1e-5)
  # Bad input: one line, exit 2. A checkpoint whose config does not fit its variables:
  config = tiny.get_config()
  config.train.C = 8
  checkpoint.save_model(str(tmp_path / "mismatch"), nnx.state(net),
                        genotype=darts.DARTS_V2.to_dict(), config=config.to_dict())
  for args in ([f"--trained={tmp_path / 'nope'}"], [f"--trained={directory}", "--batch=-1"],
               [f"--trained={directory}", "--platforms=cpu,bogus"],
               [f"--trained={tmp_path / 'mismatch'}"]):
    bad = cli_helpers.run("dnas.export", *args)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert len(bad.stderr.strip().splitlines()) == 1
