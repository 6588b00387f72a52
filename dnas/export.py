"""Exports a retrained network for a fixed input shape: a serialized JAX function
(`jax.export`, StableHLO), an ONNX model or a TFLite (LiteRT) model.

    python -m dnas.export --trained=runs/x/trained [--format=jax|onnx|tflite] [--out=...] [--batch=1]
                          [--table=latency_table.json] [--platforms=cpu,cuda,tpu]

`--trained` is what `python -m dnas.train` saved (an Orbax checkpoint holding the
variables, the genotype and the config). A checkpoint of a space outside dnas (an own
model's) also needs `--config=<the config file that registers the space>`, e.g.
experiments/own_model/config.py. The export takes f32[batch, H, W, C] images
normalised as the data pipeline does (mean and std in `<out>.json`) and returns f32[batch,
classes] logits; the weights are constants inside it. Loading needs only JAX:

  exported = jax.export.deserialize(open("model.jax_export", "rb").read())
  logits = exported.call(images)

`--format=onnx` (extra `dnas[onnx]`) writes `model.onnx` (opset 18, input "images"
f32[batch, H, W, C], output "logits"; `dnas.deploy.onnx`), for ONNX Runtime and whatever
reads ONNX:

  session = onnxruntime.InferenceSession("model.onnx")
  logits = session.run(None, {"images": images})[0]

`--format=tflite` (extra `dnas[tflite]` and `pip install --no-deps litert-converter==0.5.0`)
writes `model.tflite` (signature "serving_default", input "images", output "logits";
`dnas.deploy.tflite`), for the LiteRT interpreter on phones and microcontrollers.

The command reloads the file, checks it against the model, and reports its measured
latency here in the file's runtime (JAX or ONNX Runtime; median of `--repeats` calls)
beside the latency table's prediction.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from dnas import cli, config as config_lib, latency, spaces, train_lib, utils
from dnas.deploy import onnx as onnx_lib, runtimes, tflite as tflite_lib
from dnas.deploy.inference import inference_fn  # noqa: F401  (dnas.export.inference_fn)

_TRAINED = flags.DEFINE_string("trained", None, "The `trained/` checkpoint of dnas.train.")
_FORMAT = flags.DEFINE_enum("format", "jax", ["jax", "onnx", "tflite"], "jax: a jax.export "
                            "StableHLO program; onnx: an ONNX model (extra dnas[onnx]); "
                            "tflite: a LiteRT model (extra dnas[tflite]).")
_OUT = flags.DEFINE_string("out", None, "Output file (default: model.jax_export or "
                           "model.onnx or model.tflite beside --trained).")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch size of the export (0: the table's, or 1).")
_TABLE = flags.DEFINE_string("table", None, "Latency table whose prediction to report.")
_PLATFORMS = flags.DEFINE_list("platforms", [], "Platforms to lower for (default: this "
                               "backend), e.g. cpu,cuda,tpu.")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed calls of the export.")
# Only imported: a config file that registers its own search space (an own model's, e.g.
# experiments/own_model/config.py) makes that space known; the network is built from the
# config saved with the checkpoint.
_CONFIG = cli.define_config_flag(None, "Config file that registers the checkpoint's search "
                                 "space, for a space outside dnas (an own model's).")
_ALLOW_FOREIGN = flags.DEFINE_bool("allow_foreign_table", False, "Accept a table measured "
                                   "on another device kind.")


PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
SUFFIX = {"jax": "model.jax_export", "onnx": "model.onnx", "tflite": "model.tflite"}


ExportError = train_lib.TrainedError  # a trained checkpoint or export setting that cannot be used
load_trained = train_lib.load_trained


def export(fn, shape, dtype=jnp.float32, platforms=None) -> jax.export.Exported:
  """`jax.export` of fn(x) for x: dtype[shape] (lowered for `platforms`, default here)."""
  return jax.export.export(jax.jit(fn), platforms=platforms or None)(
      jax.ShapeDtypeStruct(tuple(shape), dtype))


def main(argv):
  del argv
  if not _TRAINED.value:
    raise ExportError("--trained is required (the trained/ directory that dnas.train wrote)")
  bad = [p for p in _PLATFORMS.value if p not in PLATFORMS]
  if bad:
    raise ExportError(f"--platforms: unknown platform {bad[0]!r}; valid: {', '.join(PLATFORMS)}")
  if _BATCH.value < 0 or _REPEATS.value < 1:
    raise ExportError(f"--batch must be >= 0 and --repeats >= 1, got {_BATCH.value}, "
                      f"{_REPEATS.value}")
  net, config, genotype, info = load_trained(_TRAINED.value)
  table = latency.LatencyTable.load(_TABLE.value) if _TABLE.value else None
  batch = _BATCH.value or (table.meta["batch_size"] if table else 1)
  # ONNX and TFLite files are float32 (what the runtimes' CPU kernels cover; the weights
  # are cast); a jax export computes in the dtype the network trained in.
  dtype = config.dtype if _FORMAT.value == "jax" else "float32"
  space = spaces.get(config.space)
  if table:
    table.check(batch_size=batch, dtype=dtype, allow_foreign=_ALLOW_FOREIGN.value)
  shape = (batch,) + tuple(info.image_shape)
  fn = inference_fn(net, utils.DTYPES[dtype], space.final_apply)
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(_TRAINED.value)),
                                   SUFFIX[_FORMAT.value])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  meta = dict(input_shape=list(shape), input_dtype="float32", classes=info.num_classes,
              mean=list(map(float, info.mean)), std=list(map(float, info.std)), dtype=dtype,
              genotype=space.to_dict(genotype), format=_FORMAT.value)
  if _FORMAT.value != "jax" and _PLATFORMS.value:
    raise ExportError(f"--platforms is for --format=jax; a {_FORMAT.value} model runs wherever "
                      f"its runtime does")
  if _FORMAT.value == "onnx":
    call, where = _write_onnx(fn, shape, out, meta)
  elif _FORMAT.value == "tflite":
    call, where = _write_tflite(fn, shape, out, meta)
  else:
    call, where = _write_jax(fn, shape, out, meta)
  with open(out + ".json", "w") as f:
    json.dump(meta, f, indent=1)
  if call is None:
    print(f"not checked or timed here: the export is for {where}, this is "
          f"{jax.default_backend()}")
    return
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  want = np.asarray(jax.jit(fn)(x))
  diff = float(np.max(np.abs(np.asarray(call(x)) - want)))
  measured = latency.time_call(call, x, repeats=_REPEATS.value)
  line = (f"reloaded: max |difference| to the model {diff:.2e} (largest logit "
          f"{np.max(np.abs(want)):.2e}); measured latency {measured['median']:.4f} ms in "
          f"{where} (median of {_REPEATS.value}, batch {batch})")
  if table:
    predicted = space.latency_model(table, config_lib.space_section(config), config.train,
                                    info).predict(genotype)
    line += (f"; table prediction {predicted:.4f} ms (measured in "
             f"{table.meta.get('runtime', 'jax')})")
  print(line)


def _write_jax(fn, shape, out, meta):
  """Writes the jax.export; (the reloaded file's call or None where it cannot run here,
  where it runs)."""
  exported = export(fn, shape, platforms=_PLATFORMS.value)
  with open(out, "wb") as f:
    f.write(exported.serialize())
  meta["platforms"] = list(exported.platforms)
  print(f"wrote {out} ({os.path.getsize(out) / 2**20:.2f} MiB, input f32{list(shape)}, "
        f"platforms {', '.join(exported.platforms)})")
  with open(out, "rb") as f:  # reloaded as a user would
    reloaded = jax.export.deserialize(bytearray(f.read()))
  if jax.default_backend() not in reloaded.platforms:
    return None, ", ".join(reloaded.platforms)
  return jax.jit(reloaded.call), f"JAX {jax.__version__} on {jax.devices()[0].device_kind}"


def _write_onnx(fn, shape, out, meta):
  """Writes the ONNX model; (the reloaded file's ONNX Runtime call, where it runs)."""
  runtimes.check("onnxruntime")
  onnx = onnx_lib.require_onnx()
  model = onnx_lib.to_onnx(fn, shape, doc=json.dumps(meta["genotype"]))
  onnx.save(model, out)
  meta.update(opset=onnx_lib.OPSET, input_name="images", output_name="logits")
  print(f"wrote {out} ({os.path.getsize(out) / 2**20:.2f} MiB, input f32{list(shape)}, "
        f"{len(model.graph.node)} nodes, opset {onnx_lib.OPSET})")
  session = runtimes.ort_session(onnx.load(out))  # reloaded as a user would
  stamp = runtimes.stamp("onnxruntime")
  return (lambda x: session.run(None, {"images": x})[0],
          f"ONNX Runtime {stamp['runtime_version']} on {latency.cpu_model()} "
          f"({stamp['runtime_threads']} threads)")


def _write_tflite(fn, shape, out, meta):
  """Writes the TFLite model; (the reloaded file's LiteRT call, where it runs)."""
  runtimes.check("litert")
  with open(out, "wb") as f:
    f.write(tflite_lib.to_tflite(fn, shape))
  meta.update(signature="serving_default", input_name="images", output_name="logits")
  print(f"wrote {out} ({os.path.getsize(out) / 2**20:.2f} MiB, input f32{list(shape)})")
  with open(out, "rb") as f:  # reloaded as a user would
    call = runtimes.litert_call(f.read())
  stamp = runtimes.stamp("litert")
  return call, (f"LiteRT {stamp['runtime_version']} (XNNPACK) on {latency.cpu_model()} "
                f"({stamp['runtime_threads']} threads)")


if __name__ == "__main__":
  cli.run(main, user_errors=(ExportError, onnx_lib.ConversionError, runtimes.RuntimeError_))
