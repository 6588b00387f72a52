"""Linen users: a Linen module as a candidate op, and a searched network used from Linen
code, both through `flax.nnx.bridge`.

1. `LinenCandidates`: an NNX model whose MixedOp mixes a Linen `nn.Conv` (wrapped with
   `nnx.bridge.ToNNX`) and NNX ops; dnas's bilevel step searches it like any NNX model.
   Call `nnx.bridge.lazy_init(model, example)` once to create the Linen variables.
2. `SearchedClassifier`: a Linen module that uses the discretised `OwnNet` (built by
   `nnx.bridge.to_linen` from the searched picks) as a feature extractor. Its variables
   are ordinary Linen collections ("params", "batch_stats"); `linen_variables` converts a
   trained NNX network's state into them, and `ArchParam`s of an undiscretised supernet
   would sit in their own "ArchParam" collection.
"""

import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

import dnas
from dnas import arch
from experiments.own_model.model import OwnNet


class LinenCandidates(nnx.Module):
  """f32[N, H, W, C] -> f32[N, classes]; the MixedOp chooses between a Linen 3x3 conv and
  NNX 1x1 and 5x5 convs."""

  def __init__(self, c: int = 4, classes: int = 10, *, rngs: nnx.Rngs):
    self.mixed = dnas.MixedOp([nnx.bridge.ToNNX(nn.Conv(c, (3, 3)), rngs=rngs),
                               nnx.Conv(c, c, (1, 1), rngs=rngs),
                               nnx.Conv(c, c, (5, 5), rngs=rngs)], rngs=rngs)
    self.head = nnx.Linear(c, classes, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.mean(nnx.relu(self.mixed(x)), axis=(1, 2)))


def searched_net(picks: dict[str, int], width: int, blocks: int, train: bool, *,
                 rngs: nnx.Rngs):
  """The discrete network of `picks` (`dnas.arch.choices` of a searched OwnNet); with
  `train=False` BatchNorm uses its running statistics."""
  net = arch.discretize(OwnNet(width=width, blocks=blocks, rngs=rngs), picks)
  net.train() if train else net.eval()
  return net


class SearchedClassifier(nn.Module):
  """Linen code around the searched network: features from it, then a Linen Dense."""
  picks: dict
  width: int = 16
  blocks: int = 2
  classes: int = 10
  train: bool = False

  @nn.compact
  def __call__(self, x):
    logits = nnx.bridge.to_linen(searched_net, self.picks, self.width, self.blocks,
                                 self.train, name="searched")(x)
    return nn.Dense(self.classes, name="calibration")(logits)


def linen_variables(net: nnx.Module, name: str = "searched") -> dict:
  """Linen variables {"params": {name: ...}, "batch_stats": {name: ...}} of an NNX
  network, for a `to_linen` submodule called `name`."""
  out = {}
  for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    out[collection] = {name: nnx.to_pure_dict(nnx.state(net, kind))}
  return out
