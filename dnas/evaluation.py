"""Evaluation shared by the search and retraining: one eval step, with running BatchNorm
statistics (the reference's `model.eval()`), and the mean over a split's batches."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dnas import kernels, trace_cache, utils


def _call(net, x, **inputs):
  return net(x, **inputs)


def make_eval_step(graphdef_eval, *, shardings=None, dtype=None, apply=None,
                   jit: bool = True, cache_key: str | None = None):
  """eval(variables, batch, inputs) -> (sum of losses f32[], number correct f32[],
  number of examples f32[]), over the global batch.

  Args:
    graphdef_eval: the model's graphdef in eval mode.
    shardings: None, or ((the variables' shardings, ...), batch sharding) from
      `dnas.parallel`; the results are replicated.
    dtype: the activations' dtype (weights and images cast where used; float32 logits).
    apply: `apply(net, x, **inputs)` -> logits f32[N, K] or a tuple whose first entry
      they are (default: `net(x, **inputs)`; a space's `final_apply` for retraining).
    jit: False returns the pure function.
    cache_key: what the model computes beyond dnas's code and the arguments' shapes, to
      keep the jitted step's trace on disk (`trace_cache.cached_jit`); None: traced in
      every process.

  The step's `variables` is the tuple of states merged with `graphdef_eval` (search:
  (params, alphas, batch_stats); retraining: (params, batch_stats)); `batch` is
  {"image": f32[N, H, W, C], "label": int32[N], optional "mask": f32[N]} (examples whose
  mask is 0 are padding and not counted); `inputs` are keyword inputs of the model ({}; a
  supernet's masked op weights for DARTS-PT).
  """
  apply = apply or _call

  def eval_step(variables, batch, inputs):
    params, *rest = variables
    net = nnx.merge(graphdef_eval, utils.cast_floating(params, dtype), *rest, copy=True)
    out = apply(net, utils.cast_floating(batch["image"], dtype), **inputs)
    logits = utils.at_least_float32(out[0] if isinstance(out, tuple) else out)
    mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return ((losses * mask).sum(), jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            mask.sum())
  if not jit:
    return eval_step
  eval_step = kernels.for_local_devices(eval_step)
  if shardings is None:
    return trace_cache.cached_jit(eval_step, cache_key)
  variables_sh, batch_sh = shardings
  replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
  return trace_cache.cached_jit(eval_step, cache_key,
                                in_shardings=(tuple(variables_sh), batch_sh, replicated),
                                out_shardings=replicated)


def evaluate(eval_fn, batches) -> tuple[float, float]:
  """Mean loss and accuracy over batches.

  Args:
    eval_fn: batch -> (sum of per-example losses, number correct, number of examples)
      over the global batch (padding excluded).
    batches: iterable of batches for eval_fn.

  Returns:
    (mean loss, accuracy) over all examples.
  """
  loss, correct, n = 0.0, 0.0, 0.0
  for batch in batches:
    l, c, k = eval_fn(batch)
    loss, correct, n = loss + float(l), correct + float(c), n + float(k)
  return loss / n, correct / n
