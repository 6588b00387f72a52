"""The continuous relaxation: how a step's forward passes get their op weights from the
architecture logits. Softmax (DARTS Eq. 2) needs nothing; Gumbel-softmax (FBNet Eq. 5,
GDAS) samples them, so every step hands the model a key from the step's own randomness
and the temperature of its schedule. The sampling itself is `dnas.arch.gumbel_softmax`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnas.arch import RELAXATIONS  # noqa: F401  (re-exported)


class Relaxation(NamedTuple):
  """`kind` "softmax" or "gumbel"; `tau(step) -> f32[]` the Gumbel temperature."""
  kind: str = "softmax"
  tau: Callable | None = None

  def model_inputs(self, key: jax.Array, step: jax.Array) -> dict:
    """Keyword inputs of the supernet's call for one forward pass: {} for softmax,
    {"arch_key": key, "tau": f32[]} for Gumbel (`darts.Network(relaxation="gumbel")`)."""
    if self.kind == "softmax":
      return {}
    return {"arch_key": key, "tau": jnp.asarray(self.tau(step), jnp.float32)}


def softmax() -> Relaxation:
  return Relaxation()


def gumbel(tau: Callable) -> Relaxation:
  """Gumbel-softmax samples at temperature `tau(step)` (e.g. `bilevel.per_epoch_anneal`)."""
  return Relaxation("gumbel", tau)
