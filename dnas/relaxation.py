"""The continuous relaxation: how a step's forward passes get their op weights from the
architecture logits. Softmax (DARTS Eq. 2) and sigmoid (FairDARTS) need nothing;
Gumbel-softmax (FBNet Eq. 5, GDAS), Dirichlet (DrNAS) and uniform single paths (SPOS)
sample them, so every step hands the model a key from the step's own randomness (and Gumbel the temperature of its
schedule). The weights themselves are `dnas.arch.op_weights`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnas.arch import RELAXATIONS  # noqa: F401  (re-exported)


# Methods whose relaxation is part of their definition; the others take search.relaxation.
METHOD_RELAXATION = {"drnas": "dirichlet", "fair_darts": "sigmoid", "spos": "uniform",
                     "proxyless": "binary"}


def relaxation_kind(config) -> str:
  """The relaxation (one of RELAXATIONS) that `config.method` searches with."""
  return METHOD_RELAXATION.get(config.method, config.search.relaxation)


class Relaxation(NamedTuple):
  """`kind` one of RELAXATIONS; `tau(step) -> f32[]` the Gumbel temperature."""
  kind: str = "softmax"
  tau: Callable | None = None

  @property
  def stochastic(self) -> bool:
    return self.kind in ("gumbel", "dirichlet", "uniform", "binary")

  def model_inputs(self, key: jax.Array, step: jax.Array, phase: int = 0) -> dict:
    """Keyword inputs of the supernet's call for one forward pass: {} for softmax and
    sigmoid, {"arch_key": key} for Dirichlet and uniform, {"arch_key": key, "tau": f32[]} for
    Gumbel (`Network(relaxation=...)` of either space), {"arch_key": key, "arch_phase":
    phase} for binary gates (0: an architecture step's two paths, 1: a weight step's
    one; `dnas.spaces.mobile`)."""
    if not self.stochastic:
      return {}
    if self.kind in ("dirichlet", "uniform"):
      return {"arch_key": key}
    if self.kind == "binary":
      return {"arch_key": key, "arch_phase": phase}
    return {"arch_key": key, "tau": jnp.asarray(self.tau(step), jnp.float32)}


def softmax() -> Relaxation:
  return Relaxation()


def gumbel(tau: Callable) -> Relaxation:
  """Gumbel-softmax samples at temperature `tau(step)` (e.g. `bilevel.per_epoch_anneal`)."""
  return Relaxation("gumbel", tau)


def dirichlet() -> Relaxation:
  """DrNAS: Dirichlet samples of concentration ELU(alpha) + 1 per edge and forward pass."""
  return Relaxation("dirichlet")


def uniform() -> Relaxation:
  """SPOS / RANDOM-NAS: one op per edge drawn uniformly per forward pass, shared by all
  cells; the architecture logits are not used."""
  return Relaxation("uniform")


def binary() -> Relaxation:
  """ProxylessNAS: binary gates on paths drawn from softmax(alpha), two per
  architecture step and one per weight step (`dnas.arch.binary_gates`)."""
  return Relaxation("binary")


def sigmoid() -> Relaxation:
  """FairDARTS: independent sigmoid(alpha) per op."""
  return Relaxation("sigmoid")
