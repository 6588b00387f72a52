"""The MobileNetV2-block space as a search space (`config.space = "mobile"`).

`config.mobile` (merged into the space's `model`, `dnas.config.space_section`): `family`
"proxyless" (ProxylessNAS's mobile space: 6 MBConvs and zero) or "fbnet" (FBNet's 9
blocks); `width_mult`; `stem_stride` (2 at ImageNet's resolution, 1 for small images);
`widths`, `depths`, `strides` per stage and `head` (empty or 0: the family's own);
`dropout` before the classifier. An architecture is its layout and one op per layer,
JSON {"family", "stem", "stem_stride", "first", "head", "layers": [[C_out, stride, op],
...]}; the published networks go by name (`published.PUBLISHED`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import latency
from dnas.errors import ConfigError
from dnas.latency import mixed as mixed_latency
from dnas.latency.expected import ExpectedLatency
from dnas.spaces.base import ArchError
from dnas.spaces.mobile import ops as ops_lib
from dnas.spaces.mobile.network import Layout, MobileArch, MobileNet, candidates, layout, ops_of
from dnas.spaces.mobile.published import PUBLISHED


def _layout(model) -> Layout:
  return layout(model.family, width_mult=model.width_mult, stem_stride=model.stem_stride,
                widths=model.widths, depths=model.depths, strides=model.strides,
                head=model.head)


def _logits(alphas) -> list[np.ndarray]:
  """The layers' alpha rows, in layer order."""
  rows = {}
  for path, v in nnx.to_flat_state(alphas):
    if path[-1] == "alpha" and path[0] == "layers":
      rows[int(path[1])] = np.asarray(v.get_value() if hasattr(v, "get_value") else v)
  return [rows[i] for i in sorted(rows)]


class MobileSpace:
  """ProxylessNAS's and FBNet's spaces (`dnas.spaces.base.SearchSpace`)."""

  name = "mobile"
  published = PUBLISHED

  def validate(self, model, train) -> None:
    del train
    if model.family not in ops_lib.FAMILIES:
      raise ConfigError(f"mobile.family {model.family!r} is unknown; valid: "
                        f"{', '.join(ops_lib.FAMILIES)}")
    if not model.width_mult > 0:
      raise ConfigError(f"mobile.width_mult must be > 0, got {model.width_mult}")
    if model.stem_stride not in (1, 2):
      raise ConfigError(f"mobile.stem_stride must be 1 or 2, got {model.stem_stride}")
    if not 0 <= model.dropout < 1:
      raise ConfigError(f"mobile.dropout must be in [0, 1), got {model.dropout}")
    try:
      lay = _layout(model)
    except ValueError as e:
      raise ConfigError(f"mobile: {e}") from None
    if any(s not in (1, 2) for _, s in lay.layers) or any(c < 1 for c, _ in lay.layers):
      raise ConfigError(f"mobile: strides must be 1 or 2 and widths positive, got "
                        f"{model.strides or 'the defaults'} / {model.widths or 'the defaults'}")

  def supernet(self, model, info, rngs: nnx.Rngs) -> nnx.Module:
    return MobileNet(_layout(model), info.num_classes, info.image_shape[-1],
                     relaxation=model.relaxation, gumbel_hard=model.gumbel_hard, rngs=rngs)

  def derive(self, alphas, model) -> MobileArch:
    """The argmax op of each layer (ProxylessNAS's `convert_to_normal_net`, FBNet's
    most likely architecture)."""
    lay = _layout(model)
    return MobileArch(lay, ops_of(lay, [int(np.argmax(a)) for a in _logits(alphas)]))

  def _groups(self, model):
    """{group: (layer indices, op names)}: layers with the same candidates."""
    out = {}
    for i, shape in enumerate(_layout(model).layer_shapes()):
      cands = candidates(model.family, *shape)
      name = "layers" if model.family == "fbnet" else (
          "residual" if ops_lib.ZERO in cands else "transition")
      out.setdefault(name, ([], cands))[0].append(i)
    return out

  def alpha_groups(self, alphas, model):
    rows = _logits(alphas)
    return {g: (np.stack([rows[i] for i in idx]), names)
            for g, (idx, names) in self._groups(model).items()}

  def with_op_logits(self, alphas, groups, model):
    alphas = jax.tree.map(lambda x: x, alphas)
    flat = dict(nnx.to_flat_state(alphas))
    for g, (idx, _) in self._groups(model).items():
      if g in groups:
        for row, i in enumerate(idx):
          flat[("layers", i, "alpha")].set_value(jnp.asarray(groups[g][row]))
    return alphas

  def to_dict(self, arch: MobileArch) -> dict:
    lay = arch.layout
    return dict(family=lay.family, stem=lay.stem, stem_stride=lay.stem_stride, first=lay.first,
                head=lay.head, layers=[[c, s, op] for (c, s), op in zip(lay.layers, arch.ops)])

  def from_dict(self, d) -> MobileArch:
    keys = ("family", "stem", "stem_stride", "first", "head", "layers")
    if not isinstance(d, dict) or any(k not in d for k in keys):
      raise ArchError(f"an architecture of the mobile space is a JSON object with "
                      f"{', '.join(keys)}")
    if d["family"] not in ops_lib.FAMILIES:
      raise ArchError(f"family {d['family']!r} is unknown; valid: {', '.join(ops_lib.FAMILIES)}")
    for k in ("stem", "stem_stride", "first", "head"):
      if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < (0 if k == "first" else 1):
        raise ArchError(f"{k} must be a positive integer, got {d[k]!r}")
    layers = d["layers"]
    if not isinstance(layers, list) or not layers:
      raise ArchError("layers must be a non-empty list of [C_out, stride, op]")
    lay = Layout(d["family"], d["stem"], d["stem_stride"], d["first"],
                 tuple((int(c), int(s)) for c, s, _ in _checked_layers(layers)), d["head"])
    ops = tuple(op for _, _, op in layers)
    for i, ((c_in, c_out, stride), op) in enumerate(zip(lay.layer_shapes(), ops)):
      if op not in candidates(lay.family, c_in, c_out, stride):
        raise ArchError(f"layer {i} ({c_in}->{c_out}, stride {stride}): op {op!r} is not one "
                        f"of {', '.join(candidates(lay.family, c_in, c_out, stride))}")
    return MobileArch(lay, ops)

  def final(self, arch: MobileArch, model, train, info, rngs: nnx.Rngs) -> nnx.Module:
    del train
    return MobileNet(arch, info.num_classes, info.image_shape[-1], dropout=model.dropout,
                     rngs=rngs)

  def final_apply(self, net, x, *, key=None, drop_path_prob=None):
    del drop_path_prob
    return net(x, key=key), None

  def draw(self, arch, path_prefix: str) -> list[str]:
    del arch, path_prefix
    return []

  def random_arch(self, rng: np.random.Generator, model, info) -> MobileArch:
    """A uniformly drawn op per layer of the searched layout."""
    del info
    lay = _layout(model)
    return MobileArch(lay, tuple(str(rng.choice(candidates(lay.family, *shape)))
                                 for shape in lay.layer_shapes()))

  # Latency: each candidate block timed alone at its layer's input shape, and the rest
  # of the network (`dnas.latency.mixed`).

  def _traced(self, model, info, batch_size: int, dtype: str):
    net = MobileNet(_layout(model), info.num_classes, info.image_shape[-1], rngs=nnx.Rngs(0))
    net.eval()
    return net, jnp.zeros((batch_size,) + tuple(info.image_shape), jnp.dtype(dtype))

  def latency_profile(self, model, train, info, *, batch_size: int, dtype: str,
                      repeats: int, seed: int = 0, progress=None, runtime: str = "jax",
                      models_dir: str | None = None):
    del train, seed
    net, example = self._traced(model, info, batch_size, dtype)
    return mixed_latency.profile(net, example, repeats=repeats, progress=progress,
                                 runtime=runtime, models_dir=models_dir)

  def latency_model(self, table, model, train, info) -> ExpectedLatency:
    """E[LAT] over the layers' candidates, differentiable in their alphas (ProxylessNAS
    Eq. 5, FBNet Eq. 4 at the softmax); `predict(arch)` of an architecture of the
    searched layout."""
    del train
    net = nnx.eval_shape(lambda: MobileNet(_layout(model), info.num_classes,
                                           info.image_shape[-1], rngs=nnx.Rngs(0)))
    example = jax.ShapeDtypeStruct((table.meta["batch_size"],) + tuple(info.image_shape),
                                   jnp.dtype(table.meta["dtype"]))
    expected = mixed_latency.expected_latency(table, net, example)
    lay = _layout(model)

    def picks(arch: MobileArch):
      if arch.layout != lay:
        raise ArchError("the latency table describes the searched layout; this "
                        "architecture has another")
      return {f"layers/{i}": [(0, candidates(lay.family, *shape).index(op))]
              for i, (shape, op) in enumerate(zip(lay.layer_shapes(), arch.ops))}

    return dataclasses.replace(expected, picks=picks)

  def compile_final(self, arch, model, train, info, *, batch_size: int, dtype: str,
                    runtime: str = "jax"):
    """(forward, args): the compiled final network in eval mode and random inputs."""
    return latency.compile_eval(self.final(arch, model, train, info, nnx.Rngs(0)),
                                info.image_shape, batch_size=batch_size, dtype=dtype,
                                runtime=runtime, apply=self.final_apply)


def _checked_layers(layers):
  for layer in layers:
    if (not isinstance(layer, list) or len(layer) != 3 or not isinstance(layer[2], str)
        or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in layer[:2])):
      raise ArchError(f"a layer is [C_out, stride, op], got {layer!r}")
    yield layer


SPACE = MobileSpace()
