"""Exports a retrained network as a serialized inference function (`jax.export`,
StableHLO) for a fixed input shape and dtype.

    python -m dnas.export --trained=runs/x/trained [--out=runs/x/model.jax_export] [--batch=1]
                          [--table=latency_table.json] [--platforms=cpu,cuda,tpu]

`--trained` is what `python -m dnas.train` saved (an Orbax checkpoint holding the
variables, the genotype and the config). A checkpoint of a space outside dnas (an own
model's) also needs `--config=<the config file that registers the space>`, e.g.
experiments/own_model/config.py. The export takes f32[batch, H, W, C] images
normalised as the data pipeline does (mean and std in `<out>.json`) and returns f32[batch,
classes] logits; the weights are constants inside it. Loading needs only JAX:

  exported = jax.export.deserialize(open("model.jax_export", "rb").read())
  logits = exported.call(images)

The command reloads the file, checks it against the model, and reports its measured
latency here (median of `--repeats` calls) beside the latency table's prediction.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from dnas import checkpoint, cli, config as config_lib, latency, spaces, utils
from dnas.data.pipeline import dataset_info

_TRAINED = flags.DEFINE_string("trained", None, "The `trained/` checkpoint of dnas.train.")
_OUT = flags.DEFINE_string("out", None, "Output file (default: model.jax_export beside "
                           "--trained).")
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


class ExportError(ValueError):
  """A trained checkpoint or export setting that cannot be used."""


def load_trained(directory: str):
  """(net in eval mode, config, architecture, DatasetInfo) of a `dnas.train` checkpoint."""
  if not os.path.isdir(directory):
    raise ExportError(f"--trained {directory}: no such directory (dnas.train writes "
                      f"<workdir>/trained)")
  try:
    genotype, config = checkpoint.load_model_meta(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"--trained {directory} is not a dnas.train checkpoint with genotype "
                      f"and config ({type(e).__name__})") from None
  config = ml_collections.ConfigDict(config)
  try:
    space = spaces.get(config.space)
  except ValueError as e:
    raise ExportError(f"--trained {directory}: {e}; for a space of your own, pass "
                      f"--config=<the config file that registers it>") from None
  genotype = space.from_dict(genotype)
  info = dataset_info(config.data.name, config.data.image_size, config.data.data_dir)
  model = config_lib.space_section(config)
  abstract = nnx.eval_shape(lambda: space.final(genotype, model, config.train, info,
                                                nnx.Rngs(0)))
  graphdef, target = nnx.split(abstract)
  want = {"/".join(map(str, p)): tuple(v.get_value().shape)
          for p, v in nnx.to_flat_state(target)}
  try:
    have = checkpoint.model_variable_shapes(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"--trained {directory}: cannot read its variables' metadata "
                      f"({type(e).__name__})") from None
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise ExportError(
          f"--trained {directory}: variable {name} is {have.get(name, 'missing')} in the "
          f"checkpoint but {want.get(name, 'absent')} in the network that its config and "
          f"genotype describe")
  try:
    variables = checkpoint.load_model_variables(directory, target)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise ExportError(f"--trained {directory}: its variables do not fit the network its "
                      f"config and genotype describe ({type(e).__name__}: {reason})") from None
  net = nnx.merge(graphdef, variables)
  net.eval()
  return net, config, genotype, info


def inference_fn(net: nnx.Module, dtype=None, apply=None):
  """logits(images): the network in eval mode (running BatchNorm statistics, no drop path
  or auxiliary head), f32[N, H, W, C] -> f32[N, classes]; variables are closed over.
  `dtype`: the activations' dtype, as in training; `apply`: the space's `final_apply`
  (default: call the network, taking the first output of a tuple)."""
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)

  def logits(images):
    m = nnx.merge(graphdef, utils.cast_floating(params, dtype), rest, copy=True)
    x = utils.cast_floating(images, dtype)
    out = apply(m, x)[0] if apply else m(x)
    return utils.at_least_float32(out[0] if isinstance(out, tuple) else out)
  return logits


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
  dtype = config.dtype
  space = spaces.get(config.space)
  if table:
    table.check(batch_size=batch, dtype=dtype, allow_foreign=_ALLOW_FOREIGN.value)
  shape = (batch,) + tuple(info.image_shape)
  fn = inference_fn(net, utils.DTYPES[dtype], space.final_apply)
  exported = export(fn, shape, platforms=_PLATFORMS.value)
  out = _OUT.value or os.path.join(os.path.dirname(os.path.abspath(_TRAINED.value)),
                                   "model.jax_export")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "wb") as f:
    f.write(exported.serialize())
  with open(out + ".json", "w") as f:
    json.dump(dict(input_shape=list(shape), input_dtype="float32", classes=info.num_classes,
                   mean=list(map(float, info.mean)), std=list(map(float, info.std)),
                   platforms=list(exported.platforms), dtype=dtype,
                   genotype=space.to_dict(genotype)), f, indent=1)
  print(f"wrote {out} ({os.path.getsize(out) / 2**20:.2f} MiB, input f32{list(shape)}, "
        f"platforms {', '.join(exported.platforms)})")
  # Reload as a user would; check it against the model, then time it.
  with open(out, "rb") as f:
    reloaded = jax.export.deserialize(bytearray(f.read()))
  if jax.default_backend() not in reloaded.platforms:
    print(f"not checked or timed here: the export is for {', '.join(reloaded.platforms)}, "
          f"this is {jax.default_backend()}")
    return
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  call = jax.jit(reloaded.call)
  diff = float(jnp.max(jnp.abs(call(x) - jax.jit(fn)(x))))
  measured = latency.time_call(call, x, repeats=_REPEATS.value)
  line = (f"reloaded: max |difference| to the model {diff:.2e}; measured latency "
          f"{measured['median']:.4f} ms (median of {_REPEATS.value}, batch {batch}, "
          f"{jax.devices()[0].device_kind})")
  if table:
    predicted = space.latency_model(table, config_lib.space_section(config), config.train,
                                    info).predict(genotype)
    line += f"; table prediction {predicted:.4f} ms"
  print(line)


if __name__ == "__main__":
  cli.run(main, user_errors=(ExportError,))
