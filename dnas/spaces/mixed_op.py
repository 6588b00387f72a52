"""The generic space: any NNX model whose choices are `dnas.MixedOp`s (each owning its
alpha), discretised by argmax per MixedOp (`dnas.arch.choices`, `arch.discretize`).

A researcher's config file registers one for its model and names it in `config.space`:

  from dnas import spaces
  from dnas.spaces.mixed_op import MixedOpSpace
  spaces.register(MixedOpSpace("my_net", lambda model, info, rngs: MyNet(rngs=rngs)))

The architecture's JSON is {"choices": {"<MixedOp path>": op index, ...}}.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import arch as arch_lib
from dnas import latency
from dnas.latency import mixed as mixed_latency
from dnas.spaces.base import ArchError


class MixedOpSpace:
  """A space over the MixedOps of the model that `build(model, info, rngs)` returns.

  Args:
    name: the `config.space` name.
    build: builds the model (with its MixedOps) for the space's section `model`
      (`config.model`, see `dnas.spaces.base`) and a `DatasetInfo`; the supernet and,
      discretised, the final network (the model's `__call__(x)` returns logits
      f32[N, classes]).
    op_names: optional, (model, MixedOp path) -> its K op names, for logs and plots
      (default: the op indices).
  """

  published: dict = {}

  def __init__(self, name: str, build: Callable, op_names: Callable | None = None):
    self.name, self.build, self.op_names = name, build, op_names

  def validate(self, model, train) -> None:
    del model, train

  def supernet(self, model, info, rngs: nnx.Rngs) -> nnx.Module:
    return self.build(model, info, rngs)

  def _logits(self, alphas) -> dict[str, np.ndarray]:
    return {arch_lib.path_str(path[:-1]): np.asarray(v.get_value() if hasattr(v, "get_value")
                                                     else v)
            for path, v in nnx.to_flat_state(alphas) if path[-1] == "alpha"}

  def derive(self, alphas, model) -> dict[str, int]:
    """{MixedOp path: argmax alpha} (ties: the lowest index)."""
    del model
    return {path: int(np.argmax(a)) for path, a in sorted(self._logits(alphas).items())}

  def alpha_groups(self, alphas, model):
    def names(path, k):
      return tuple(self.op_names(model, path)) if self.op_names else tuple(map(str, range(k)))
    return {path: (a[None], names(path, a.shape[-1]))
            for path, a in sorted(self._logits(alphas).items())}

  def to_dict(self, arch) -> dict:
    return {"choices": dict(sorted(arch.items()))}

  def from_dict(self, d) -> dict[str, int]:
    choices = d.get("choices") if isinstance(d, dict) else None
    if not isinstance(choices, dict) or not choices:
      raise ArchError('an architecture of this space is {"choices": {"<MixedOp path>": '
                      'op index, ...}}')
    for path, k in choices.items():
      if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ArchError(f"choice of {path!r} must be an op index >= 0, got {k!r}")
    return dict(choices)

  def final(self, arch, model, train, info, rngs: nnx.Rngs) -> nnx.Module:
    del train  # the discretised supernet
    try:
      return arch_lib.discretize(self.build(model, info, rngs), arch)
    except ValueError as e:
      raise ArchError(str(e)) from None

  def final_apply(self, net, x, *, key=None, drop_path_prob=None):
    del key, drop_path_prob
    return net(x), None

  def draw(self, arch, path_prefix: str) -> list[str]:
    del arch, path_prefix
    return []

  # Latency: each candidate timed alone at its MixedOp's input shape, and the rest.

  def _example(self, info, batch_size: int, dtype: str):
    return jax.ShapeDtypeStruct((batch_size,) + tuple(info.image_shape), jnp.dtype(dtype))

  def latency_profile(self, model, train, info, *, batch_size: int, dtype: str,
                      repeats: int, seed: int = 0, progress=None, runtime: str = "jax",
                      models_dir: str | None = None):
    del train, seed  # each candidate op of the supernet is timed
    net = self.build(model, info, nnx.Rngs(0))
    example = jnp.zeros((batch_size,) + tuple(info.image_shape), jnp.dtype(dtype))
    return mixed_latency.profile(net, example, repeats=repeats, progress=progress,
                                 runtime=runtime, models_dir=models_dir)

  def random_arch(self, rng: np.random.Generator, model, info) -> dict[str, int]:
    """A uniformly drawn choice per MixedOp."""
    net = nnx.eval_shape(lambda: self.build(model, info, nnx.Rngs(0)))
    return {p: int(rng.integers(len(m.ops))) for p, m in arch_lib.mixed_ops(net).items()}

  def compile_final(self, arch, model, train, info, *, batch_size: int, dtype: str,
                    runtime: str = "jax"):
    """(forward, args): the compiled final network in eval mode and random inputs."""
    return latency.compile_eval(self.final(arch, model, train, info, nnx.Rngs(0)),
                                info.image_shape, batch_size=batch_size, dtype=dtype,
                                runtime=runtime, apply=self.final_apply)

  def latency_model(self, table, model, train, info) -> latency.ExpectedLatency:
    """E[LAT] over the MixedOps, differentiable in their alphas; `predict(arch)` of
    {path: op index}."""
    del train
    net = nnx.eval_shape(lambda: self.build(model, info, nnx.Rngs(0)))
    example = self._example(info, table.meta["batch_size"], table.meta["dtype"])
    return mixed_latency.expected_latency(table, net, example)
