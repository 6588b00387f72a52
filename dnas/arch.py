"""Architecture parameters and the continuous relaxation that mixes candidate ops.

`ArchParam` is its own `nnx.Variable` type, so filters keep the two levels of the
bilevel problem apart:

  graphdef, params, alphas, stats = nnx.split(net, nnx.Param, ArchParam, nnx.BatchStat)
  w_opt = nnx.Optimizer(net, w_tx, wrt=nnx.Param)
  a_opt = nnx.Optimizer(net, a_tx, wrt=ArchParam)

`MixedOp` works in any NNX model: give it a list of modules that map the same input
to outputs of one shape.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ArchParam(nnx.Variable):
  """Architecture logits alpha (not an `nnx.Param`: the weight filter skips them)."""


def init_alphas(key: jax.Array, shape: Sequence[int], scale: float = 1e-3) -> ArchParam:
  """DARTS initialisation alpha ~ 1e-3 * N(0, 1) (reference `_initialize_alphas`).

  Returns:
    ArchParam holding f32[*shape].
  """
  if isinstance(key, jax.core.Tracer):
    return ArchParam(scale * jax.random.normal(key, tuple(shape), jnp.float32))
  # Eagerly, draw on the host (no per-shape XLA compile), seeded by the key.
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return ArchParam(jnp.asarray(scale * rng.standard_normal(tuple(shape)), jnp.float32))


def mix(weights: jax.Array, outputs: Sequence[jax.Array]) -> jax.Array:
  """sum_k weights[k] * outputs[k] (DARTS Eq. 2 once the weights are softmax(alpha)).

  Args:
    weights: f32[K].
    outputs: K arrays of one shape and dtype.

  Returns:
    Array of that shape and dtype. Weights wider than the outputs are cast down to
    them, so bfloat16 activations stay bfloat16 (the alphas and their softmax stay
    float32; the products, and so the alpha gradients, are bfloat16-precise).
  """
  if len(outputs) != weights.shape[-1]:
    raise ValueError(f"{len(outputs)} op outputs but {weights.shape[-1]} weights")
  out_dtype = outputs[0].dtype
  if (jnp.issubdtype(out_dtype, jnp.floating)
      and jnp.finfo(out_dtype).bits < jnp.finfo(weights.dtype).bits):
    weights = weights.astype(out_dtype)
  out = weights[0] * outputs[0]
  for k in range(1, len(outputs)):
    out = out + weights[k] * outputs[k]
  return out


class MixedOp(nnx.Module):
  """Continuous relaxation of a choice among candidate ops (DARTS Eq. 2).

  y = sum_k softmax(alpha)_k * op_k(x). The ops are any NNX modules (or callables)
  that take the same input and return arrays of one shape.

  Standalone, the MixedOp owns its logits `alpha` (an `ArchParam`, f32[K]). A model
  that shares logits across many mixed ops (the DARTS supernet shares one row per
  edge among all normal cells) creates them with `own_alpha=False` and passes
  `weights` at call time.
  """

  def __init__(self, ops: Sequence[nnx.Module], *, rngs: nnx.Rngs | None = None,
               own_alpha: bool = True, alpha_scale: float = 1e-3):
    if not ops:
      raise ValueError("MixedOp needs at least one candidate op")
    self.ops = nnx.List(list(ops))
    if own_alpha:
      if rngs is None:
        raise ValueError("MixedOp(own_alpha=True) needs rngs to initialise alpha")
      self.alpha = init_alphas(rngs.params(), (len(ops),), alpha_scale)
    else:
      self.alpha = None

  def __call__(self, x, weights: jax.Array | None = None, **kwargs):
    """Mixes all candidate ops.

    Args:
      x: input of every op (e.g. f32[N, H, W, C]).
      weights: optional f32[K] op weights; default softmax(self.alpha).
      **kwargs: passed to every op.

    Returns:
      The weighted sum of the op outputs.
    """
    if weights is None:
      if self.alpha is None:
        raise ValueError("MixedOp without its own alpha needs `weights`")
      weights = self.weights()
    return mix(weights, [op(x, **kwargs) for op in self.ops])

  def weights(self) -> jax.Array:
    """f32[K] softmax(alpha)."""
    return jax.nn.softmax(self.alpha[...], axis=-1)

  def choice(self) -> int:
    """Index of the op with the largest weight: the general discretisation rule."""
    return int(jnp.argmax(self.alpha[...]))


def batched_mixed_ops(ops: Sequence[MixedOp], xs: Sequence[jax.Array],
                      weights: jax.Array) -> jax.Array:
  """sum_e ops[e](xs[e], weights[e]) for structurally identical mixed ops, run as one
  `jax.vmap`-ed body over their stacked variables.

  Same result as the plain sum, but XLA compiles each candidate op once per group
  instead of once per edge: on CPU, compile time grows with the number of kernels.
  BatchNorm statistics are written back to each op.

  Args:
    ops: E MixedOps with identical structure and variable shapes (own_alpha=False).
    xs: E inputs of one shape, e.g. f32[N, H, W, C].
    weights: f32[E, K] op weights per edge.

  Returns:
    The sum over the E edges of their mixed outputs.
  """
  if len(ops) == 1:
    return ops[0](xs[0], weights[0])
  graphdef, _ = nnx.split(ops[0])
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *[nnx.state(op) for op in ops])

  def body(state, x, w):
    op = nnx.merge(graphdef, state)
    y = op(x, w)
    return y, nnx.state(op)

  ys, new_state = jax.vmap(body)(stacked, jnp.stack(xs), weights)
  for e, op in enumerate(ops):
    nnx.update(op, jax.tree.map(lambda v: v[e], new_state))
  return jnp.sum(ys, axis=0)
