"""A final network as the function that ships: images in, logits out, weights closed over."""

from flax import nnx

from dnas import utils


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
