"""The search-space protocol: everything the search and retraining loops need from a space.

A space is a small stateless object. The loop builds its supernet, reads the discrete
architecture from the supernet's architecture parameters (`ArchParam` state), writes it
as JSON, and builds and calls the final network from it; nothing in the loop knows which
space it runs. `config.space` names it (`dnas.spaces.get`).

A space reads its own section of the config, never the whole config: `model`, which is
`config.model` with the space's own section (`config.<space name>`) and what the method
decides about the supernet (relaxation, partial channels, ...: `dnas.config.space_section`),
and `train`, the final network's settings (`config.train`). A selection rule a space
provides (`pt_select`, DARTS-PT) gets the selection's `Context`, whose config holds the
selection's own settings (seed, `darts_pt.interval`).

  space = spaces.get(config.space)
  model = dnas.config.space_section(config)
  net = space.supernet(model, info, nnx.Rngs(0))            # ArchParam variables inside
  arch = space.derive(host_alphas, model)                   # e.g. darts.Genotype
  space.save(arch, "genotype.json"); arch = space.load("genotype.json" or "DARTS_V2")
  final = space.final(arch, model, config.train, info, nnx.Rngs(0))
  logits, logits_aux = space.final_apply(final, images, key=key, drop_path_prob=0.1)
"""

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from flax import nnx


class ArchError(ValueError):
  """An architecture (or architecture file) that the space cannot use; one line."""


class SearchSpace(Protocol):
  """What a search space provides (`dnas.spaces.darts.SPACE`, `dnas.spaces.mixed_op`)."""

  name: str
  # Published architectures by name (DARTS_V2, ...), accepted wherever a file is.
  published: Mapping[str, Any]

  def validate(self, model, train) -> None:
    """Raises `dnas.errors.ConfigError` for a bad field of the space's sections."""

  def supernet(self, model, info, rngs: nnx.Rngs) -> nnx.Module:
    """The supernet for data `info` (`DatasetInfo`); called f32[N, H, W, C] -> logits."""

  def derive(self, alphas: nnx.State, model) -> Any:
    """The discrete architecture of the supernet's architecture parameters (host values)."""

  def alpha_groups(self, alphas: nnx.State, model) -> dict[str, tuple[np.ndarray, tuple]]:
    """{group: (f32[rows, K] logits, K op names)}: what the loop logs and plots per epoch
    (a DARTS space: "normal" and "reduce")."""

  def with_op_logits(self, alphas: nnx.State, groups: dict, model) -> nnx.State:
    """`alphas` with the op logits of `groups` ({group: f32[rows, K]}, as `alpha_groups`
    names them) replaced (DrNAS's pruning between stages)."""

  def to_dict(self, arch) -> dict:
    """The architecture as JSON data."""

  def from_dict(self, d) -> Any:
    """Parses and validates JSON data; raises ArchError."""

  def final(self, arch, model, train, info, rngs: nnx.Rngs) -> nnx.Module:
    """The final network of `arch` that `train` retrains."""

  def final_apply(self, net: nnx.Module, x, *, key, drop_path_prob):
    """(logits f32[N, classes], auxiliary logits or None) of the final network."""

  def draw(self, arch, path_prefix: str) -> list[str]:
    """Writes drawings of the architecture; returns their paths ([] when it has none)."""

  # Optional: `arch_metrics(arch, model, alphas) -> dict` of numbers logged with each
  # epoch's derived architecture (its parameter-free ops; NAS-Bench-201's benchmark
  # accuracies).

  # Latency-aware search (optional; `dnas.latency`):

  def latency_profile(self, model, train, info, *, batch_size: int, dtype: str,
                      repeats: int, seed: int = 0, progress=None, runtime: str = "jax"):
    """A `dnas.latency.LatencyTable` of every part of the final network, measured here
    in `runtime` (`dnas.deploy.RUNTIMES`) at the shapes traced from that network (`seed`:
    any random draws). A space may also take `models_dir` (`dnas.latency.mixed.profile`)."""

  def latency_model(self, table, model, train, info):
    """The table's view of the final network: `expected(alphas)` (f32[] ms,
    differentiable), `predict(arch)` and `minimum()` (ms), as `dnas.latency.ExpectedLatency`."""

  def random_arch(self, rng: np.random.Generator, model, info) -> Any:
    """A uniformly drawn architecture (for calibrating a table)."""

  def compile_final(self, arch, model, train, info, *, batch_size: int, dtype: str,
                    runtime: str = "jax"):
    """(forward, args): the final network in eval mode compiled in `runtime`, and random
    inputs (`dnas.latency.compile_eval`)."""


def save(space: SearchSpace, arch, path: str | os.PathLike) -> None:
  """Writes `arch` as the space's JSON."""
  with open(path, "w") as f:
    json.dump(space.to_dict(arch), f, indent=1)
    f.write("\n")


def load(space: SearchSpace, source: str | os.PathLike):
  """An architecture from a published name (`space.published`) or a JSON file (parsed
  as data, never evaluated); any problem is one ArchError line naming the file."""
  if str(source) in space.published:
    return space.published[str(source)]
  try:
    with open(source) as f:
      text = f.read()
  except OSError as e:
    names = f" or a published name ({', '.join(space.published)})" if space.published else ""
    raise ArchError(f"cannot read architecture file {source}: {e.strerror}; give a JSON "
                    f"file written by python -m dnas.search{names}") from None
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise ArchError(f"{source}: not JSON ({e})") from None
  try:
    return space.from_dict(d)
  except ArchError as e:
    raise ArchError(f"{source}: {e}") from None
