"""Deployment: JAX -> ONNX primitive by primitive and whole networks against JAX's outputs,
latency tables measured in ONNX Runtime, and what the converter refuses."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("onnxruntime", reason="the ONNX tests need the extra dnas[onnx]")

from dnas import latency, spaces  # noqa: E402
from dnas.data.pipeline import DatasetInfo  # noqa: E402
from dnas.deploy import ConversionError, compile_fn, inference_fn  # noqa: E402
from dnas.latency.table import runtime_of  # noqa: E402
from dnas.spaces import darts  # noqa: E402
from dnas.spaces.mobile import PUBLISHED, MobileNet  # noqa: E402
from dnas.spaces.mobile.space import SPACE as MOBILE  # noqa: E402
from dnas.spaces.nb201 import network as nb201_network, structure  # noqa: E402


LITERT = pytest.mark.skipif(
    not (importlib.util.find_spec("ai_edge_litert") and importlib.util.find_spec(
        "litert_converter")),
    reason="needs the extra dnas[tflite] and pip install --no-deps litert-converter==0.5.0")


def _close(fn, shape, atol=1e-5, seed=0, runtime="onnxruntime"):
  """fn converted and run in `runtime` equals fn jitted, relative to its scale."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  want = np.asarray(jax.jit(fn)(x))
  got = compile_fn(runtime, fn, shape).call(x)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol * max(1.0, np.abs(want).max()))


def _conv(x, w, **kw):
  return jax.lax.conv_general_dilated(x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


W = np.random.default_rng(1).standard_normal((3, 3, 2, 6)).astype(np.float32)
DEPTH = np.random.default_rng(2).standard_normal((5, 5, 1, 4)).astype(np.float32)
DENSE = np.random.default_rng(3).standard_normal((4, 7)).astype(np.float32)
GROUPED = np.random.default_rng(4).standard_normal((2, 2, 3)).astype(np.float32)
SCALE = np.random.default_rng(5).uniform(0.5, 1.5, (4,)).astype(np.float32)

# One function per primitive family the networks use, each on f32[2, 6, 6, 4].
PRIMITIVES = {
    "conv_strided_padded": lambda x: _conv(x[..., :2], W, window_strides=(2, 1),
                                           padding=((1, 2), (0, 1))),
    "conv_depthwise_dilated": lambda x: _conv(x, DEPTH, window_strides=(1, 1),
                                              padding=((4, 4), (4, 4)), rhs_dilation=(2, 2),
                                              feature_group_count=4),
    "matmul": lambda x: x @ DENSE,
    "grouped_einsum": lambda x: jnp.einsum("nhwgc,cgo->nhwgo", x.reshape(2, 6, 6, 2, 2),
                                           GROUPED),
    "batched_dot": lambda x: jnp.einsum("nij,njk->nik", x[..., 0], x[..., 1]),
    "batchnorm": lambda x: (x - x.mean((0, 1, 2))) * jax.lax.rsqrt(x.var((0, 1, 2)) + 1e-5)
                           * SCALE + 1.0,
    "relu_relu6_clamp": lambda x: jax.nn.relu(x) + jax.nn.relu6(3 * x) + jnp.clip(x, -0.5, 0.5),
    "max_pool": lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                                (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
    "sum_pool": lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1),
                                                (1, 1, 1, 1), "SAME"),
    "pad_slice_concat": lambda x: jnp.concatenate(
        [jnp.pad(x, ((0, 0), (0, 1), (1, 0), (0, 0)))[:, 1:, :-1], x[:, ::2, 1::2].repeat(2, 1)
         .repeat(2, 2)], -1),
    "transpose_reshape_reduce": lambda x: jnp.max(x.transpose(0, 3, 1, 2).reshape(2, 4, 36), -1)
                                          + jnp.sum(x, (1, 2)) - jnp.min(x, (1, 2)),
    "select_compare_pow": lambda x: jnp.where(x > 0.1, x ** 2, -x ** 3) + (x != 0) * 1.0,
    "unary": lambda x: jnp.exp(-jnp.abs(x)) + jnp.tanh(x) + jax.nn.sigmoid(x)
                       + jnp.sqrt(x * x + 1.0) + jnp.log1p(x * x) + jnp.expm1(-x * x),
    "conv_nchw_oihw": lambda x: jax.lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2), DEPTH.transpose(3, 2, 0, 1).repeat(4, 1), (1, 2),
        ((2, 1), (0, 2)), dimension_numbers=("NCHW", "OIHW", "NCHW")),
    "asymmetric_pools": lambda x: jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, 2, 3, 1), (1, 2, 1, 1), ((0, 0), (0, 1), (2, 0), (0, 0)))
                                  + jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 2, 3, 1), (1, 2, 1, 1), ((0, 0), (0, 1), (2, 0), (0, 0))),
    "lax_clamp_lazy_broadcast": lambda x: jax.lax.clamp(
        jnp.broadcast_to(jnp.full((4,), -0.1), x.shape),
        jnp.broadcast_to(x.mean((1, 2), keepdims=True), x.shape),
        jnp.broadcast_to(jnp.full((4,), 0.1), x.shape)).transpose(0, 3, 1, 2),
    "reduce_no_axes": lambda x: jnp.sum(x, axis=()) * 2 + x,
    "split_cast": lambda x: sum(p.astype(jnp.float16).astype(jnp.float32) * (i + 1)
                                for i, p in enumerate(jnp.split(x, 2, axis=-1))),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_primitive_families_match_jax(name):
  _close(PRIMITIVES[name], (2, 6, 6, 4), atol=1e-3 if name == "split_cast" else 1e-5)


def test_constants_stay_small_and_unknown_primitives_are_named():
  # BatchNorm's per-channel constants broadcast to the image stay [C]-sized in the file.
  scale = jnp.asarray(SCALE)
  model = compile_fn("onnxruntime", lambda x: x * scale + scale, (2, 6, 6, 4)).model
  assert max(int(np.prod(t.dims)) for t in model.graph.initializer) <= 4
  with pytest.raises(ConversionError, match="'cumsum'"):
    compile_fn("onnxruntime", lambda x: jnp.cumsum(x, 1), (2, 6, 6, 4))
  # Primitives with a sub-jaxpr that is not a plain call are refused, not run once.
  with pytest.raises(ConversionError, match="'scan'"):
    compile_fn("onnxruntime", lambda x: jax.lax.fori_loop(0, 3, lambda i, c: c * 2.0, x),
               (2, 6, 6, 4))
  with pytest.raises(ConversionError, match="'reduce_window'"):
    compile_fn("onnxruntime", lambda x: jax.lax.reduce_window(
        x, 0.0, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"), (2, 6, 6, 4))
  # relu6 is one Clip: the Relu it replaced is not left behind to run (and block fusion).
  model = compile_fn("onnxruntime", lambda x: jax.nn.relu6(_conv(x[..., :2], W, window_strides=(
      1, 1), padding="SAME")), (2, 6, 6, 4)).model
  ops = [n.op_type for n in model.graph.node]
  assert ops.count("Clip") == 1 and "Relu" not in ops
  with pytest.raises(ConversionError, match="returns 2 arrays"):
    compile_fn("onnxruntime", lambda x: (x, x), (2, 6, 6, 4))


def _randomize(net):
  """Random BatchNorm statistics and scales, so that every branch shows in the logits."""
  rng = np.random.default_rng(7)
  for _, v in nnx.to_flat_state(nnx.state(net, nnx.BatchStat)):
    v.set_value(jnp.asarray(rng.uniform(0.5, 1.5, v.get_value().shape), jnp.float32))
  for path, v in nnx.to_flat_state(nnx.state(net, nnx.Param)):
    if path[-1] == "scale":
      v.set_value(jnp.asarray(rng.uniform(0.5, 1.5, v.get_value().shape), jnp.float32))
  net.eval()
  return net


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("litert", marks=LITERT)])
@pytest.mark.parametrize("name", ["FBNet_A", "proxyless_gpu"])
def test_published_mobile_networks_match_jax(name, runtime):
  # FBNet-A has grouped 1x1 convs with a channel shuffle; ProxylessNAS-GPU 7x7 kernels.
  net = _randomize(MobileNet(PUBLISHED[name], 10, 3, rngs=nnx.Rngs(0)))
  _close(inference_fn(net), (2, 32, 32, 3), runtime=runtime)


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("litert", marks=LITERT)])
def test_darts_and_nb201_networks_match_jax(runtime):
  # DARTS_V2's cells (separable and dilated convs, pools, factorized reduce) and a
  # NAS-Bench-201 cell with every op (average pool through reduce_window).
  space = spaces.get("darts")
  from dnas.configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  info = DatasetInfo("", (8, 8, 1), 10, (), ())
  from dnas import config as config_lib  # pylint: disable=import-outside-toplevel
  net = _randomize(space.final(darts.DARTS_V2, config_lib.space_section(config), config.train,
                               info, nnx.Rngs(0)))
  _close(inference_fn(net, apply=space.final_apply), (3, 8, 8, 1), runtime=runtime)
  arch = structure.Structure.from_string(
      "|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|")
  # Two cells per stage: the converters trace the scanned stages as a loop.
  tiny_net = _randomize(nb201_network.TinyNetwork(arch, 4, 2, 10, in_channels=1,
                                                  rngs=nnx.Rngs(0)))
  _close(inference_fn(tiny_net, apply=spaces.get("nb201").final_apply), (3, 8, 8, 1),
         runtime=runtime)


@functools.cache
def _mobile_model():
  import ml_collections  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict(dict(
      family="fbnet", width_mult=0.5, stem_stride=1, widths=(16, 24), depths=(1, 1),
      strides=(1, 2), head=32, dropout=0.0, relaxation="softmax", gumbel_hard=False))


def test_latency_table_measured_in_onnxruntime():
  info = DatasetInfo("", (8, 8, 1), 10, (), ())
  table = MOBILE.latency_profile(_mobile_model(), None, info, batch_size=4, dtype="float32",
                                 repeats=3, runtime="onnxruntime")
  assert runtime_of(table.meta) == "onnxruntime" and table.meta["runtime_version"]
  assert len(table.entries) == 2 * 9 + 1 and table.dispatch_ms > 0
  table.check(batch_size=4, dtype="float32")  # measured here: a search takes it
  arch = MOBILE.random_arch(np.random.default_rng(0), _mobile_model(), info)
  predicted = MOBILE.latency_model(table, _mobile_model(), None, info).predict(arch)
  forward, args = MOBILE.compile_final(arch, _mobile_model(), None, info, batch_size=4,
                                       dtype="float32", runtime="onnxruntime")
  assert forward(*args).shape == (4, 10)
  measured = latency.time_call(forward, *args, repeats=5)["median"]
  assert predicted > 0 and measured > 0
  with pytest.raises(latency.LatencyError, match="jax only"):
    spaces.get("darts").latency_profile(None, None, info, batch_size=4, dtype="float32",
                                        repeats=1, runtime="onnxruntime")


def test_latency_cli_in_onnxruntime(tmp_path):
  # profile, calibrate and predict --measure of a tiny mobile space, all in ONNX Runtime.
  from tests import cli_helpers  # pylint: disable=import-outside-toplevel
  config = ["--config=dnas/configs/mobile_digits.py", "--config.mobile.family=fbnet",
            "--config.mobile.depths=(1,1)", "--config.mobile.widths=(16,24)",
            "--config.mobile.strides=(1,2)", "--config.mobile.head=32",
            "--config.latency.batch_size=4", "--config.latency.repeats=3"]
  table = tmp_path / "table.json"
  out = cli_helpers.run("dnas.latency", "profile", *config, "--runtime=onnxruntime",
                        f"--out={table}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "onnxruntime on" in out.stdout
  out = cli_helpers.run("dnas.latency", "calibrate", *config, f"--table={table}",
                        "--networks=3", "--rounds=1")
  assert out.returncode == 0, out.stderr[-3000:]
  info = DatasetInfo("", (8, 8, 1), 10, (), ())
  spaces.save(MOBILE, MOBILE.random_arch(np.random.default_rng(1), _mobile_model(), info),
              tmp_path / "arch.json")
  out = cli_helpers.run("dnas.latency", "predict", *config, f"--table={table}",
                        f"--genotype={tmp_path / 'arch.json'}", "--measure")
  assert out.returncode == 0, out.stderr[-3000:]
  result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
  assert result["runtime"] == "onnxruntime" and result["measured_ms"] > 0
  for args, message in ((["--runtime=tflite"], "unknown runtime 'tflite'; valid: jax, "
                         "onnxruntime, litert"),
                        (["--config=dnas/configs/tiny.py", "--runtime=onnxruntime"],
                         "the darts space's latency table is measured in jax only")):
    out = cli_helpers.run("dnas.latency", "profile", *(config if "tiny" not in args[0] else []),
                          *args, f"--out={tmp_path / 'bad.json'}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr[-2000:]


def test_profile_writes_the_timed_models_for_a_device(tmp_path):
  # --models_dir: each candidate and the whole network as ONNX files, named in a manifest
  # whose rest entry is the whole network less its chosen candidates (docs/latency.md).
  info = DatasetInfo("", (8, 8, 1), 10, (), ())
  table = MOBILE.latency_profile(_mobile_model(), None, info, batch_size=2, dtype="float32",
                                 repeats=2, runtime="onnxruntime", models_dir=str(tmp_path))
  manifest = __import__("json").loads((tmp_path / "manifest.json").read_text())
  assert set(manifest["files"]) == set(table.entries) - {manifest["rest"]} | {"whole"}
  assert len(manifest["whole_minus"]) == 2 and manifest["meta"]["runtime"] == "onnxruntime"
  import onnxruntime  # pylint: disable=import-outside-toplevel
  for name in ("whole", manifest["whole_minus"][0]):
    session = onnxruntime.InferenceSession(str(tmp_path / manifest["files"][name]))
    assert session.get_inputs()[0].shape[0] == 2
  rest = table.entries[manifest["rest"]]
  # A candidate timed below the dispatch floor costs 0, not less.
  want = rest["whole_ms"] - sum(max(table.entries[k]["median"] - table.dispatch_ms, 0.0)
                                for k in manifest["whole_minus"])
  assert rest["median"] == pytest.approx(max(want, table.dispatch_ms), abs=1e-4)


@LITERT
def test_latency_table_measured_in_litert(tmp_path):
  info = DatasetInfo("", (8, 8, 1), 10, (), ())
  table = MOBILE.latency_profile(_mobile_model(), None, info, batch_size=2, dtype="float32",
                                 repeats=2, runtime="litert", models_dir=str(tmp_path))
  assert runtime_of(table.meta) == "litert" and len(table.entries) == 2 * 9 + 1
  manifest = __import__("json").loads((tmp_path / "manifest.json").read_text())
  assert all(f.endswith(".tflite") for f in manifest["files"].values())
  arch = MOBILE.random_arch(np.random.default_rng(0), _mobile_model(), info)
  forward, args = MOBILE.compile_final(arch, _mobile_model(), None, info, batch_size=2,
                                       dtype="float32", runtime="litert")
  assert forward(*args).shape == (2, 10)
