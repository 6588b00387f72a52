"""The search-space protocol: everything the search and retraining loops need from a space.

A space is a small stateless object. The loop builds its supernet, reads the discrete
architecture from the supernet's architecture parameters (`ArchParam` state), writes it
as JSON, and builds and calls the final network from it; nothing in the loop knows which
space it runs. `config.space` names it (`dnas.spaces.get`).

  space = spaces.get(config.space)
  net = space.supernet(config, info, nnx.Rngs(0))          # ArchParam variables inside
  arch = space.derive(host_alphas, config)                  # e.g. darts.Genotype
  space.save(arch, "genotype.json"); arch = space.load("genotype.json" or "DARTS_V2")
  final = space.final(arch, config, info, nnx.Rngs(0))
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

  def validate(self, config) -> None:
    """Raises `dnas.config.ConfigError` for a bad space-specific config field."""

  def supernet(self, config, info, rngs: nnx.Rngs) -> nnx.Module:
    """The supernet for data `info` (`DatasetInfo`); called f32[N, H, W, C] -> logits."""

  def derive(self, alphas: nnx.State, config) -> Any:
    """The discrete architecture of the supernet's architecture parameters (host values)."""

  def alpha_groups(self, alphas: nnx.State, config) -> dict[str, tuple[np.ndarray, tuple]]:
    """{group: (f32[rows, K] logits, K op names)}: what the loop logs and plots per epoch."""

  def to_dict(self, arch) -> dict:
    """The architecture as JSON data."""

  def from_dict(self, d) -> Any:
    """Parses and validates JSON data; raises ArchError."""

  def final(self, arch, config, info, rngs: nnx.Rngs) -> nnx.Module:
    """The final network of `arch` that `config.train` retrains."""

  def final_apply(self, net: nnx.Module, x, *, key, drop_path_prob):
    """(logits f32[N, classes], auxiliary logits or None) of the final network."""

  def draw(self, arch, path_prefix: str) -> list[str]:
    """Writes drawings of the architecture; returns their paths ([] when it has none)."""

  # Optional: `arch_metrics(arch, config, alphas) -> dict` of numbers logged with each
  # epoch's derived architecture (its parameter-free ops; NAS-Bench-201's benchmark
  # accuracies).

  # Latency-aware search (optional; `dnas.latency`):

  def latency_profile(self, config, info, *, batch_size: int, dtype: str, repeats: int,
                      progress=None):
    """A `dnas.latency.LatencyTable` of every part of the final network, measured here
    at the shapes traced from that network."""

  def latency_model(self, table, config, info):
    """The table's view of the final network: `expected(alphas)` (f32[] ms,
    differentiable), `predict(arch)` and `minimum()` (ms), as `dnas.latency.ExpectedLatency`."""

  def random_arch(self, rng: np.random.Generator, config) -> Any:
    """A uniformly drawn architecture (for calibrating a table)."""

  def compile_final(self, arch, config, info, *, batch_size: int, dtype: str):
    """(forward, args): the compiled final network in eval mode and random inputs."""


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
