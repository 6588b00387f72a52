"""Shapes a network really meets: its forward traced abstractly (nothing runs), recording
the argument and output shapes of each call of chosen module types. Latency tables are
keyed by these shapes, so they come from the network itself, not from a second
description of it."""

import contextlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dnas import arch, layers


class Call(NamedTuple):
  """One module call: its path in the model ('cells/3'), the module, the shapes of its
  positional array arguments (None for other arguments) and of its output (a pytree of
  `jax.ShapeDtypeStruct`s)."""
  path: str
  module: nnx.Module
  inputs: tuple
  output: Any


def _shape(x):
  if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(x, "aval"):
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
  return None


def _with_subclasses(types):
  seen, todo = [], list(types)
  while todo:
    t = todo.pop()
    if t not in seen:
      seen.append(t)
      todo.extend(t.__subclasses__())
  return seen


@contextlib.contextmanager
def _recording(types, record):
  """Wraps `__call__` of `types` (and their subclasses that define one) while active;
  a call inside a call of the same instance (super().__call__) is recorded once."""
  patched, active = [], set()

  def wrap(original):
    def __call__(self, *args, **kwargs):
      if id(self) in active:
        return original(self, *args, **kwargs)
      active.add(id(self))
      try:
        out = original(self, *args, **kwargs)
      finally:
        active.discard(id(self))
      record(self, tuple(_shape(a) for a in args), jax.tree.map(_shape, out))
      return out
    return __call__

  for t in _with_subclasses(types):
    if "__call__" in vars(t):
      patched.append((t, vars(t)["__call__"]))
      t.__call__ = wrap(vars(t)["__call__"])
  try:
    yield
  finally:
    for t, original in patched:
      t.__call__ = original


def calls(model: nnx.Module, *example, types: tuple[type, ...], **kwargs):
  """(calls, output): the calls of modules of `types` (subclasses included) while
  `model(*example, **kwargs)` is traced abstractly (`example`: arrays or
  `jax.ShapeDtypeStruct`s), in call order, and the model's output shapes. Calls inside
  `nnx.remat`, `scan` or `vmap` are recorded with the module copies those transforms
  make, whose paths are unknown ('?'); stacks of identical layers are traced as a loop
  (`dnas.layers.unrolled`), so that each layer's call is recorded."""
  graphdef, state = nnx.split(model)
  found = []

  def forward(state, *xs):
    m = nnx.merge(graphdef, state)
    paths = {id(node): arch.path_str(path) for path, node in nnx.iter_graph(m)
             if isinstance(node, nnx.Module)}

    def record(module, inputs, output):
      found.append(Call(paths.get(id(module), "?"), module, inputs, output))
    with _recording(types, record), layers.unrolled():
      return m(*xs, **kwargs)

  output = jax.eval_shape(forward, state, *example)
  return found, output
