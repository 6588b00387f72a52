"""Selection: how the trained supernet becomes one architecture, after the search.

A selection rule is a function `rule(ctx: Context) -> arch`. DARTS takes the argmax of
the architecture weights (`argmax`, the default, `config.search.selection="argmax"`);
perturbation-based selection (DARTS-PT, Wang et al. ICLR 2021) masks candidate ops and
measures the supernet's validation accuracy, fine-tuning between decisions, which is
what `Context` carries the functions for. Register a rule in `SELECTIONS`.
"""

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from dnas import parallel


class Context(NamedTuple):
  """What a selection rule may use.

  space: the search space (`dnas.spaces.SearchSpace`); config: the search config.
  state: the final `bilevel.SearchState` (device arrays).
  evaluate(state, inputs=None) -> (loss, accuracy): the supernet of `state` on the
    validation split, called with the keyword `inputs` (e.g. {"weights": f32[E, K]}).
  train(state, batches, inputs=None) -> state: weight steps (alphas fixed) over
    `batches`, an iterator of the weight split's batches (`weight_batches(epoch)` gives
    that epoch's), the supernet called with `inputs` if given. It donates the state it
    is given: use the state it returns.
  """
  space: Any
  config: Any
  state: Any
  evaluate: Callable[[Any], tuple[float, float]]
  train: Callable[[Any, Iterator], Any]
  weight_batches: Callable[[], Iterator]


def argmax(ctx: Context):
  """DARTS: the space's own derivation from the final architecture weights."""
  return ctx.space.derive(parallel.to_host(ctx.state.alphas), ctx.config)


def perturbation(ctx: Context):
  """DARTS-PT (Wang et al., ICLR 2021; ruocwang/darts-pt): the space's perturbation-based
  projection (`space.pt_select(ctx)`), which masks each candidate op of an edge in turn
  and keeps the op whose removal hurts the supernet's validation accuracy most."""
  return ctx.space.pt_select(ctx)


SELECTIONS: dict[str, Callable[[Context], Any]] = {"argmax": argmax, "pt": perturbation}
