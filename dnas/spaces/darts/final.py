"""Final (discrete) networks built from a Genotype: NetworkCIFAR and NetworkImageNet.

Layout NHWC. Mirror the reference `model.py` layer for layer; parameter counts equal
the reference's (tests pin them). Affine BatchNorm everywhere. `net.train()` turns on
drop path and the auxiliary head; `net.eval()` uses running BatchNorm statistics.

Call: `logits, logits_aux = net(x, key=key, drop_path_prob=p)`; `logits_aux` is None
in eval mode or without an auxiliary head. `key` (a PRNG key) is needed in train
mode when p > 0.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dnas.layers import identical_runs, scan_layers
from dnas.spaces.darts.genotypes import Genotype
from dnas.spaces.darts.ops import (AvgPool, FactorizedReduce, Identity, ReLUConvBN, batch_norm,
                                   conv2d, linear, make_op)


def drop_path(x: jax.Array, drop_prob: jax.Array | float, key: jax.Array) -> jax.Array:
  """Drops whole samples of one op output (Larsson et al. 2017; reference `utils.drop_path`).

  Args:
    x: f32[N, H, W, C].
    drop_prob: scalar in [0, 1).
    key: PRNG key.

  Returns:
    x / keep * Bernoulli(keep) with a per-sample mask f32[N, 1, 1, 1], keep = 1 - drop_prob.
  """
  keep = 1.0 - jnp.asarray(drop_prob, jnp.float32)  # drawn in float32 even for bf16 x
  mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1))
  return x * (mask / keep).astype(x.dtype)


class Cell(nnx.Module):
  """A discrete cell: node i = op_a(state_a) + op_b(state_b); output = concat of `concat`."""

  def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
               reduction_prev: bool, *, rngs: nnx.Rngs):
    self.reduction = reduction
    if reduction_prev:
      self.preprocess0 = FactorizedReduce(C_prev_prev, C, rngs=rngs)
    else:
      self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, rngs=rngs)
    self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, rngs=rngs)
    edges = genotype.reduce if reduction else genotype.normal
    self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
    self.multiplier = len(self.concat)
    self.indices = tuple(j for _, j in edges)
    self.ops = nnx.List([make_op(name, C, 2 if reduction and j < 2 else 1, True, rngs)
                         for name, j in edges])
    self.deterministic = False

  def __call__(self, s0, s1, drop_prob, key):
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    for i in range(len(self.ops) // 2):
      h = []
      for e in (2 * i, 2 * i + 1):
        out = self.ops[e](states[self.indices[e]])
        # The reference drops every op's output except identities.
        if not self.deterministic and key is not None and not isinstance(self.ops[e], Identity):
          out = drop_path(out, drop_prob, jax.random.fold_in(key, e))
        h.append(out)
      states.append(h[0] + h[1])
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nnx.Module):
  """Auxiliary classifier (reference AuxiliaryHeadCIFAR / AuxiliaryHeadImageNet).

  f32[N, H, W, C] -> f32[N, num_classes] through ReLU, 5x5 avg pool (stride 3 for CIFAR's
  8x8 input, 2 for ImageNet's 7x7), 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN (not on
  ImageNet: the reference comments it out), ReLU, linear.
  """

  def __init__(self, C: int, num_classes: int, *, imagenet: bool, rngs: nnx.Rngs):
    self.pool = AvgPool(2 if imagenet else 3, kernel_size=5, padding=0)
    self.conv1 = conv2d(C, 128, 1, rngs=rngs)
    self.bn1 = batch_norm(128, True, rngs)
    self.conv2 = conv2d(128, 768, 2, rngs=rngs)
    self.bn2 = None if imagenet else batch_norm(768, True, rngs)
    self.classifier = linear(768, num_classes, rngs=rngs)

  def __call__(self, x):
    if min(x.shape[1:3]) < 5:
      raise ValueError(f"the auxiliary head needs a feature map of at least 5x5 after the "
                       f"second reduction, got {x.shape[1]}x{x.shape[2]}; use a larger image "
                       f"or auxiliary=False")
    x = self.pool(jax.nn.relu(x))
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = self.conv2(x)
    if self.bn2 is not None:
      x = self.bn2(x)
    x = jax.nn.relu(x)
    return self.classifier(x.reshape(x.shape[0], -1))


def _build_cells(genotype, layers, C_prev_prev, C_prev, C_curr, reduction_prev, rngs):
  cells, C_aux = [], None
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      C_curr *= 2
    cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, rngs=rngs)
    cells.append(cell)
    reduction_prev = reduction
    C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
    if i == 2 * layers // 3:
      C_aux = C_prev
  return nnx.List(cells), C_prev, C_aux


class _Network(nnx.Module):
  """Shared forward of the final networks: stem -> cells (+ aux head) -> pool -> linear.

  Subclasses build `cells`, `auxiliary_head`, `classifier` and define `_stem(x) -> (s0, s1)`.
  Consecutive identical cells (the normal cells of a stage after its first two) run as one
  `lax.scan` unless `scan_cells` is False; values, gradients and variables are the loop's.
  """

  def __call__(self, x, *, key: jax.Array | None = None, drop_path_prob=None):
    p = self.drop_path_prob if drop_path_prob is None else drop_path_prob
    s0, s1 = self._stem(x)
    logits_aux = None
    aux_at = 2 * self.layers // 3

    def step(cell, carry, i):
      s0, s1 = carry
      return s1, cell(s0, s1, p, None if key is None else jax.random.fold_in(key, i))

    for run in identical_runs(self.cells, (aux_at,), self.scan_cells):
      if len(run) == 1:
        s0, s1 = step(self.cells[run[0]], (s0, s1), run[0])
      else:
        s0, s1 = scan_layers([self.cells[i] for i in run], step, (s0, s1),
                             jnp.arange(run.start, run.stop))
      if run[-1] == aux_at and self.auxiliary_head is not None and not self.deterministic:
        logits_aux = self.auxiliary_head(s1)
    logits = self.classifier(jnp.mean(s1, axis=(1, 2)))
    return logits, logits_aux


class NetworkCIFAR(_Network):
  """Final CIFAR network (reference `model.NetworkCIFAR`).

  Args:
    genotype: the cells.
    C: channels of the first stage (36 in the paper).
    num_classes: classes of the classifier.
    layers: cells, as the reference; reductions at layers // 3 and 2 * layers // 3.
    auxiliary: add the auxiliary head after the second reduction (needs >= 5x5 there).
    drop_path_prob: default drop path probability (a call may override it).
    in_channels: image channels.
    scan_cells: run consecutive identical cells as one `lax.scan` (compiled once).

  Call: f32[N, H, W, in_channels] -> (f32[N, num_classes], f32[N, num_classes] | None).
  """

  def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int,
               auxiliary: bool = False, drop_path_prob: float = 0.0, *, in_channels: int = 3,
               stem_multiplier: int = 3, scan_cells: bool = True, rngs: nnx.Rngs):
    self.layers, self.drop_path_prob, self.deterministic = layers, drop_path_prob, False
    self.scan_cells = scan_cells
    C_curr = stem_multiplier * C
    self.stem = nnx.Sequential(conv2d(in_channels, C_curr, 3, 1, 1, rngs=rngs),
                               batch_norm(C_curr, True, rngs))
    self.cells, C_prev, C_aux = _build_cells(genotype, layers, C_curr, C_curr, C, False, rngs)
    self.auxiliary_head = (AuxiliaryHead(C_aux, num_classes, imagenet=False, rngs=rngs)
                           if auxiliary else None)
    self.classifier = linear(C_prev, num_classes, rngs=rngs)

  def _stem(self, x):
    s = self.stem(x)
    return s, s


class NetworkImageNet(_Network):
  """Final ImageNet network (reference `model.NetworkImageNet`): two stride-2 stems
  (224 -> 56 -> 28), cells, the 7x7 global average pool, linear.

  Call: f32[N, 224, 224, in_channels] -> (f32[N, num_classes], f32[N, num_classes] | None).
  """

  def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int,
               auxiliary: bool = False, drop_path_prob: float = 0.0, *, in_channels: int = 3,
               scan_cells: bool = True, rngs: nnx.Rngs):
    self.layers, self.drop_path_prob, self.deterministic = layers, drop_path_prob, False
    self.scan_cells = scan_cells
    self.stem0 = nnx.Sequential(
        conv2d(in_channels, C // 2, 3, 2, 1, rngs=rngs), batch_norm(C // 2, True, rngs),
        jax.nn.relu, conv2d(C // 2, C, 3, 2, 1, rngs=rngs), batch_norm(C, True, rngs))
    self.stem1 = nnx.Sequential(jax.nn.relu, conv2d(C, C, 3, 2, 1, rngs=rngs),
                                batch_norm(C, True, rngs))
    self.cells, C_prev, C_aux = _build_cells(genotype, layers, C, C, C, True, rngs)
    self.auxiliary_head = (AuxiliaryHead(C_aux, num_classes, imagenet=True, rngs=rngs)
                           if auxiliary else None)
    self.classifier = linear(C_prev, num_classes, rngs=rngs)

  def _stem(self, x):
    s0 = self.stem0(x)
    return s0, self.stem1(s0)


# The final networks by `config.train.network`.
NETWORKS = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet}
