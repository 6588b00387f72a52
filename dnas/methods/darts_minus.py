"""DARTS- (Chu et al., ICLR 2021; Meituan-AutoML/DARTS-): an auxiliary skip connection on
every edge, outside the softmax, beside the mixture:

  edge(x) = sum_k softmax(alpha)_k op_k(x) + beta(epoch) aux(x)

(aux: identity; an affine-free FactorizedReduce on stride-2 edges), in both phases, with
beta decaying over the search, so that the skip's advantage in optimisation stops
competing with the candidate skip op. The official schedule (`--decay linear`,
`--skip_beta 1`): beta = beta_0 (epochs - epoch) / epochs (1 at the first epoch, 1 / epochs
at the last); `cosine`: beta_0 (1 + cos(pi epoch / epochs)) / 2. The derivation excludes
`none` as DARTS does (on NAS-Bench-201 `none` stays a candidate, as its reference derives).
The official code has no NAS-Bench-201 search; dnas runs the same rule there (every cell
edge has stride 1, so aux is the identity).
"""

import jax.numpy as jnp

DECAYS = ("linear", "cosine")


def beta_at(step, *, beta: float, decay: str, epochs: int, steps_per_epoch: int):
  """The auxiliary skip's weight f32[] at `step` (per epoch, as the official code sets it)."""
  epoch = (step // steps_per_epoch).astype(jnp.float32)
  if decay == "linear":
    return beta * (epochs - epoch) / epochs
  if decay == "cosine":
    return beta * (1.0 + jnp.cos(jnp.pi * epoch / epochs)) / 2.0
  raise ValueError(f"DARTS- decay {decay!r} is unknown; valid: {', '.join(DECAYS)}")


def make_inputs(*, beta: float, decay: str, epochs: int, steps_per_epoch: int):
  """step -> {"aux_skip": f32[]}: the supernet's keyword input in every forward pass."""
  def inputs(step):
    return {"aux_skip": beta_at(step, beta=beta, decay=decay, epochs=epochs,
                                steps_per_epoch=steps_per_epoch)}
  return inputs
