"""A trace-time switch for ops that carry custom VJPs.

Custom backward rules make first-order gradients fast (`dnas.spaces.darts.ops`), but JAX
cannot apply forward mode to a `jax.custom_vjp` function. The exact second-order
hypergradient is a jvp of a gradient (`dnas.bilevel`), so it traces the model inside
`forward_mode_autodiff()`, and ops with custom VJPs check `plain_autodiff()` and trace
as plain JAX functions there (same values; JAX derives their derivatives). A researcher's
own custom-VJP op does the same to work with `order="second"`.
"""

import contextlib

_PLAIN = [False]
_REMAT = [False]


def plain_autodiff() -> bool:
  """True while tracing inside `forward_mode_autodiff()`."""
  return _PLAIN[0]


@contextlib.contextmanager
def forward_mode_autodiff():
  """Ops trace without custom VJPs, so `jax.jvp` can go through their gradients. Wrap the
  code that traces, not a call of an already compiled function."""
  before = _PLAIN[0]
  _PLAIN[0] = True
  try:
    yield
  finally:
    _PLAIN[0] = before


def remat_requested() -> bool:
  """True while tracing inside `rematerialize()`."""
  return _REMAT[0]


@contextlib.contextmanager
def rematerialize(enabled: bool = True):
  """Models that support it (`darts.Network`) recompute each cell's activations in the
  backward pass (`jax.checkpoint`) while tracing in this context, whatever their
  `remat` setting: the exact Hessian-vector product asks for it, since its tangents
  double the activations it keeps. `enabled=False` changes nothing."""
  before = _REMAT[0]
  _REMAT[0] = before or enabled
  try:
    yield
  finally:
    _REMAT[0] = before
