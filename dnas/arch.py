"""Architecture parameters and the continuous relaxation that mixes candidate ops.

`ArchParam` is its own `nnx.Variable` type, so filters keep the two levels of the
bilevel problem apart:

  graphdef, params, alphas, stats = nnx.split(net, nnx.Param, ArchParam, nnx.BatchStat)
  w_opt = nnx.Optimizer(net, w_tx, wrt=nnx.Param)
  a_opt = nnx.Optimizer(net, a_tx, wrt=ArchParam)

`MixedOp` works in any NNX model: give it a list of modules that map the same input
to outputs of one shape. `PartialMixedOp` is PC-DARTS's partial channel connection,
and `node_softmax` its edge normalisation.
"""

from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# How op weights come from alphas (`op_weights`): softmax (DARTS), Gumbel-softmax samples
# (FBNet, GDAS), Dirichlet samples (DrNAS), independent sigmoids (FairDARTS), uniformly
# drawn single paths that ignore the alphas (SPOS, RANDOM-NAS), binary gates on sampled
# paths (ProxylessNAS: `binary_gates`, which the space's supernet runs itself).
RELAXATIONS = ("softmax", "gumbel", "dirichlet", "sigmoid", "uniform", "binary")



class ArchParam(nnx.Variable):
  """Architecture logits alpha (not an `nnx.Param`: the weight filter skips them)."""


class EdgeParam(ArchParam):
  """Architecture logits that choose edges, not ops (PC-DARTS's beta): in the
  architecture state, but not among `op_logits`."""


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _chooses_ops(v) -> bool:
  return isinstance(v, ArchParam) and not isinstance(v, EdgeParam)


def op_logits(alphas) -> list[jax.Array]:
  """The op-choice logits of an architecture state (`nnx.State` of ArchParams), each as
  f32[rows, K]: one row per edge (a standalone MixedOp's f32[K] is one row); edge
  logits (`EdgeParam`) left out. What regularisers on the architecture read."""
  return [jnp.reshape(v[...], (-1, v[...].shape[-1]))
          for v in jax.tree.leaves(alphas, is_leaf=_is_variable) if _chooses_ops(v)]


def map_op_logits(fn, alphas):
  """`alphas` with each op-choice logit array x replaced by fn(x as f32[rows, K]) (reshaped
  back); edge logits unchanged."""
  def one(v):
    if not _chooses_ops(v):
      return v
    x = v[...]
    return v.replace(jnp.reshape(fn(jnp.reshape(x, (-1, x.shape[-1]))), x.shape))
  return jax.tree.map(one, alphas, is_leaf=_is_variable)


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

  def __call__(self, x, weights: jax.Array | None = None, *, sampled: bool = False, **kwargs):
    """Mixes all candidate ops.

    Args:
      x: input of every op (e.g. f32[N, H, W, C]).
      weights: optional f32[K] op weights; default softmax(self.alpha).
      sampled: `weights` is a straight-through one-hot sample (`gumbel_softmax(...,
        hard=True)`): only the sampled op runs (`run_sampled`).
      **kwargs: passed to every op.

    Returns:
      The weighted sum of the op outputs.
    """
    if sampled and weights is None:
      raise ValueError("MixedOp(sampled=True) needs one-hot `weights` (gumbel_softmax(..., "
                       "hard=True))")
    if weights is None:
      if self.alpha is None:
        raise ValueError("MixedOp without its own alpha needs `weights`")
      weights = self.weights()
    if sampled:
      return self.run_sampled(x, weights, **kwargs)
    return mix(weights, [op(x, **kwargs) for op in self.ops])

  def run_sampled(self, x, hard: jax.Array, **kwargs):
    """Runs only the op that the one-hot `hard` (f32[K], straight-through) selects, as
    GDAS does: y = h_k op_k(x) + sum_{j != k} h_j, k = argmax h. The other terms are 0
    in value but pass the gradient to every h_j; the other ops are not computed
    (`lax.switch`)."""
    k = jnp.argmax(hard)
    rest = jnp.sum(hard) - hard[k]
    y = self.run_op(k, x, **kwargs)
    return hard[k].astype(y.dtype) * y + rest.astype(y.dtype)

  def run_op(self, index: jax.Array, x, **kwargs):
    """op_index(x) for a traced int32[] `index`, running only that op (`lax.switch`)."""
    graphdef, state = nnx.split(self.ops)

    def branch(k):
      def run(state, x):
        ops = nnx.merge(graphdef, state)
        return ops[k](x, **kwargs), nnx.state(ops)
      return run

    y, new_state = jax.lax.switch(index, [branch(k) for k in range(len(self.ops))], state, x)
    nnx.update(self.ops, new_state)
    return y

  def run_paths(self, x, indices: jax.Array, gates: jax.Array, **kwargs):
    """sum_i gates[i] * op_{indices[i]}(x), computing only those ops: ProxylessNAS's
    binary-gate paths (`binary_gates`). indices int32[P], gates f32[P]."""
    return sum(gates[i].astype(x.dtype) * self.run_op(indices[i], x, **kwargs)
               for i in range(indices.shape[0]))

  def weights(self) -> jax.Array:
    """f32[K] softmax(alpha)."""
    return jax.nn.softmax(self.alpha[...], axis=-1)

  def choice(self) -> int:
    """Index of the op with the largest weight: the general discretisation rule."""
    return int(jnp.argmax(self.alpha[...]))


def path_str(path) -> str:
  """('blocks', 0, 'conv') -> 'blocks/0/conv', the name of a module in a model."""
  return "/".join(map(str, path))


def _mixed_op_paths(model: nnx.Module) -> dict[str, tuple]:
  """{path_str: path tuple} of every MixedOp of `model` that owns its alpha, outermost
  first."""
  found = sorted((path for path, m in nnx.iter_modules(model)
                  if isinstance(m, MixedOp) and m.alpha is not None), key=len)
  return {path_str(path): tuple(path) for path in found}


def mixed_ops(model: nnx.Module) -> dict[str, MixedOp]:
  """Every `MixedOp` of `model` that owns its alpha, by path (`path_str`), outermost
  first. Mixed ops with shared logits (`own_alpha=False`, as in the DARTS supernet) are
  the owner's to discretise."""
  out = {}
  for name, path in _mixed_op_paths(model).items():
    node = model
    for part in path:
      node = _child(node, part)
    out[name] = node
  return out


def choices(model: nnx.Module) -> dict[str, int]:
  """The general discretisation rule: argmax alpha of each MixedOp, {path: op index}."""
  return {path: m.choice() for path, m in mixed_ops(model).items()}


def _child(node, part):
  # Containers (nnx.List, nnx.Dict, lists, dicts) by item, modules by attribute.
  if isinstance(node, (Sequence, Mapping)) and not isinstance(node, str):
    return node[part]
  return getattr(node, part)


def discretize(model: nnx.Module, picks: dict[str, int] | None = None) -> nnx.Module:
  """A copy of `model` in which each MixedOp is replaced by its chosen op (`picks`,
  default `choices(model)`): the discrete network, with the chosen ops' current
  variables. For retraining from scratch, discretise a freshly built model with the
  searched picks. Mixed ops nested inside a dropped candidate disappear with it."""
  picks = choices(model) if picks is None else dict(picks)
  model = nnx.clone(model)
  paths = _mixed_op_paths(model)
  unknown = sorted(set(picks) - set(paths))
  if unknown:
    raise ValueError(f"discretize: no MixedOp at {unknown[0]!r}; the model has "
                     f"{', '.join(paths) or 'none'}")
  ops = mixed_ops(model)
  # Innermost first, so a chosen op keeps the discretised ops nested inside it.
  for name in sorted(picks, key=lambda p: -len(paths[p])):
    k = picks[name]
    if not 0 <= k < len(ops[name].ops):
      raise ValueError(f"discretize: {name} has {len(ops[name].ops)} ops, got choice {k}")
    *parent_path, last = paths[name]
    parent = model
    for part in parent_path:
      parent = _child(parent, part)
    if isinstance(parent, (MutableSequence, MutableMapping)):
      parent[last] = ops[name].ops[k]
    elif isinstance(parent, (Sequence, Mapping)):
      raise ValueError(f"discretize: the MixedOp at {name} sits in an immutable "
                       f"{type(parent).__name__}; hold it in an nnx.List or nnx.Dict")
    else:
      setattr(parent, last, ops[name].ops[k])
  return model


def gumbel_softmax(key: jax.Array, logits: jax.Array, tau, hard: bool = False) -> jax.Array:
  """Gumbel-softmax sample over the last axis (Jang et al. 2017, Eq. 2; FBNet Eq. 5):
  softmax((logits + g) / tau), g ~ Gumbel(0, 1). `hard`: the one-hot of its argmax with
  the soft sample's gradient (straight-through, as GDAS). f32[..., K] -> f32[..., K]
  (at least float32: float64 logits give a float64 sample)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  g = jax.random.gumbel(key, logits.shape, dtype)
  soft = jax.nn.softmax((logits.astype(dtype) + g) / tau, axis=-1)
  if not hard:
    return soft
  one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
  return one_hot - jax.lax.stop_gradient(soft) + soft


def uniform_path(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One op per row drawn uniformly, as a one-hot f32[..., K] that ignores the logits'
  values (single-path one-shot training: Guo et al., ECCV 2020, Eq. 4 with a uniform
  prior; Li & Talwalkar, UAI 2019). No gradient reaches the logits."""
  k = jax.random.randint(key, logits.shape[:-1], 0, logits.shape[-1])
  return jax.nn.one_hot(k, logits.shape[-1], dtype=jnp.float32)


def binary_gates(key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ProxylessNAS's binary gates in its two-path mode (Cai et al., ICLR 2019, Sec. 3.2.1;
  mit-han-lab/proxylessnas `MixedEdge.binarize`, mode "two"): two ops drawn from
  softmax(alpha) without replacement, the active one from the softmax over those two.

  Returns (int32[2] the two ops, f32[2] their gates): in value one-hot on the active op,
  in gradient the softmax over the pair, so that dL/dalpha_i = sum_j g_j p_j (delta_ij -
  p_i) over the pair, g_j = dL/dgate_j (Eq. 4 on the two paths; the other ops' alphas get
  none). logits: f32[K], K >= 2.
  """
  k_pair, k_active = jax.random.split(key)
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  pair = jax.random.choice(k_pair, logits.shape[-1], (2,), replace=False,
                           p=jax.nn.softmax(logits))
  p = jax.nn.softmax(logits[pair])
  active = jax.random.bernoulli(k_active, p[1]).astype(jnp.int32)
  return pair, jax.nn.one_hot(active, 2, dtype=p.dtype) + p - jax.lax.stop_gradient(p)


def runs_one_op(relaxation: str, key, gumbel_hard: bool) -> bool:
  """Whether `op_weights(...)` of this call are one-hot rows, so that each edge may run
  only its chosen op (`MixedOp(sampled=True)`): hard Gumbel (GDAS) and uniform paths
  (SPOS), when sampled (a key given)."""
  return key is not None and (relaxation == "uniform" or
                              (relaxation == "gumbel" and gumbel_hard))


def dirichlet_concentration(logits: jax.Array) -> jax.Array:
  """DrNAS's concentration beta = ELU(alpha) + 1 > 0 (Chen et al. 2021, Sec. 3.1; the
  official code's `F.elu(alpha) + 1`). f32[..., K] -> f32[..., K]."""
  return jax.nn.elu(logits.astype(jnp.promote_types(logits.dtype, jnp.float32))) + 1.0


def op_weights(logits: jax.Array, relaxation: str = "softmax", key: jax.Array | None = None,
               tau=None, hard: bool = False) -> jax.Array:
  """Op weights f32[..., K] from architecture logits f32[..., K] (one row per edge).

  softmax: DARTS Eq. 2. gumbel: with `key`, a Gumbel-softmax sample at temperature `tau`
  (`hard`: straight-through one-hot); without, softmax. dirichlet: with `key`, one
  reparameterised sample per row of Dir(ELU(alpha) + 1) (DrNAS's `rsample`; `jax.random.
  dirichlet` differentiates its gamma draws implicitly: the pathwise gradient);
  without, the distribution's mean. sigmoid: sigmoid(alpha) per op, no competition
  between ops (FairDARTS). uniform: with `key`, one op per row drawn uniformly (one-hot,
  `uniform_path`); without, softmax. binary: softmax (the probabilities ProxylessNAS
  samples its paths from; the gates themselves are `binary_gates`).
  """
  # At least float32 (bfloat16 logits would round the weights); float64 stays float64.
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  if relaxation == "softmax" or (relaxation in ("gumbel", "uniform") and key is None):
    return jax.nn.softmax(logits, axis=-1)
  if relaxation == "gumbel":
    return gumbel_softmax(key, logits, tau, hard)
  if relaxation == "dirichlet":
    beta = dirichlet_concentration(logits)
    if key is None:
      return beta / jnp.sum(beta, axis=-1, keepdims=True)
    return jax.random.dirichlet(key, beta)
  if relaxation == "sigmoid":
    return jax.nn.sigmoid(logits)
  if relaxation == "uniform":
    return uniform_path(key, logits)
  if relaxation == "binary":  # the mixture's weights; the sampled gates: `binary_gates`
    return jax.nn.softmax(logits, axis=-1)
  raise ValueError(f"relaxation {relaxation!r} is unknown; valid: {', '.join(RELAXATIONS)}")


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle as PC-DARTS applies it, NHWC: output channel
  i * groups + g is input channel g * (C / groups) + i. f32[N, H, W, C] -> same."""
  *lead, c = x.shape
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2, NHWC (PyTorch `MaxPool2d(2, 2)`); odd sizes are
  padded at the bottom/right so the output is ceil(H/2) x ceil(W/2), the size a
  stride-2 candidate op gives (PyTorch floors and PC-DARTS then fails to concatenate)."""
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


class PartialMixedOp(MixedOp):
  """PC-DARTS partial channel connection (Xu et al., ICLR 2020, Eq. 2): the candidate
  ops mix only the first C/K channels of the input; the other channels bypass them
  (2x2 max-pooled when the ops halve the resolution), and a channel shuffle with K
  groups interleaves the two parts.

  The ops are built for C/K input and output channels (reference `MixedOp`, k=4).
  Call: f32[N, H, W, C] -> f32[N, H', W', C], H' = H or ceil(H / 2).
  """

  def __init__(self, ops: Sequence[nnx.Module], k: int, **kwargs):
    if k < 1:
      raise ValueError(f"PartialMixedOp: k must be >= 1, got {k}")
    super().__init__(ops, **kwargs)
    self.k = k

  def __call__(self, x, weights: jax.Array | None = None, *, sampled: bool = False, **kwargs):
    c = x.shape[-1]
    if c % self.k:
      raise ValueError(f"PartialMixedOp: {c} channels are not divisible by k={self.k}")
    mixed = super().__call__(x[..., :c // self.k], weights, sampled=sampled, **kwargs)
    bypass = x[..., c // self.k:]
    if mixed.shape[1:3] != bypass.shape[1:3]:
      bypass = max_pool_2x2(bypass)
    return channel_shuffle(jnp.concatenate([mixed, bypass.astype(mixed.dtype)], axis=-1),
                           self.k)


def node_softmax(betas: jax.Array, steps: int) -> jax.Array:
  """PC-DARTS edge normalisation (Xu et al. 2020, Eq. 4): the weights of the edges into
  each intermediate node are a softmax over that node's inputs. f32[E] -> f32[E],
  E = sum_{i < steps} (i + 2), edges ordered node by node as in the DARTS cell."""
  out, start = [], 0
  for i in range(steps):
    out.append(jax.nn.softmax(betas[start:start + i + 2]))
    start += i + 2
  if start != betas.shape[0]:
    raise ValueError(f"node_softmax: {betas.shape[0]} edge logits, {steps} nodes need {start}")
  return jnp.concatenate(out)


def checkpointed_call(module: nnx.Module, *args, **static):
  """module(*args, **static) under `jax.checkpoint` (its activations are recomputed in the
  backward pass); the module's state updates (BatchNorm statistics) are written back.
  `static`: keyword arguments that are Python values, not arrays."""
  graphdef, state = nnx.split(module)

  def body(state, *args):
    m = nnx.merge(graphdef, state)
    return m(*args, **static), nnx.state(m)

  out, new_state = jax.checkpoint(body)(state, *args)
  nnx.update(module, new_state)
  return out


def batched_mixed_ops(ops: Sequence[MixedOp], xs: Sequence[jax.Array],
                      weights: jax.Array, edge_weights: jax.Array | None = None) -> jax.Array:
  """`sum_e ops[e](xs[e], weights[e])` for structurally identical mixed ops, run as one
  `jax.vmap`-ed body over their stacked variables; with `edge_weights` (f32[E]) the sum
  is weighted, `sum_e edge_weights[e] ops[e](...)` (PC-DARTS edge normalisation).

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
  def scale(e, y):
    return y if edge_weights is None else edge_weights[e].astype(y.dtype) * y

  if len(ops) == 1:
    return scale(0, ops[0](xs[0], weights[0]))
  graphdef, _ = nnx.split(ops[0])
  stacked = jax.tree.map(lambda *v: jnp.stack(v), *[nnx.state(op) for op in ops])

  def body(state, x, w):
    op = nnx.merge(graphdef, state)
    y = op(x, w)
    return y, nnx.state(op)

  ys, new_state = jax.vmap(body)(stacked, jnp.stack(xs), weights)
  for e, op in enumerate(ops):
    nnx.update(op, jax.tree.map(lambda v: v[e], new_state))
  if edge_weights is not None:
    ys = edge_weights.astype(ys.dtype).reshape((-1,) + (1,) * (ys.ndim - 1)) * ys
  return jnp.sum(ys, axis=0)


# Masks of pruned ops (DrNAS's progressive stages, `model.op_mask`).


def masked(weights, mask):
  """Op weights renormalised over the unpruned ops (the official `process_step_vector`
  with a mask: a Dirichlet sample so restricted is a Dirichlet sample of the kept
  concentrations). f32[E, K], bool[E, K] -> f32[E, K]."""
  w = weights * jnp.asarray(mask, weights.dtype)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def masked_logits(logits, mask):
  """Logits with pruned entries -inf: softmax, sigmoid and the Dirichlet mean give them
  0 (what derivation and logging read). f32[E, K], bool[E, K] | None -> f32[E, K]."""
  if mask is None:
    return logits
  return np.where(np.asarray(mask, bool), np.asarray(logits), -np.inf)
