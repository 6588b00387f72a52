"""The tiny config with a selection rule that exercises `dnas.selection.Context`: it
evaluates the supernet, takes two weight steps, evaluates again, writes what it saw to
$DNAS_PROBE_OUT, and returns the argmax architecture."""

import itertools
import json
import os

import jax
import numpy as np

from dnas import selection
from dnas.configs import tiny


def probe(ctx: selection.Context):
  first = np.asarray(jax.tree.leaves(ctx.state.params)[0])
  before = ctx.evaluate(ctx.state)
  state = ctx.train(ctx.state, itertools.islice(ctx.weight_batches(), 2))
  after = ctx.evaluate(state)
  with open(os.environ["DNAS_PROBE_OUT"], "w") as f:
    json.dump(dict(before=before, after=after, params_changed=bool(
        not np.array_equal(first, np.asarray(jax.tree.leaves(state.params)[0]))),
                   step=int(state.step)), f)
  return selection.argmax(ctx._replace(state=state))


selection.SELECTIONS["probe"] = probe


def get_config():
  c = tiny.get_config()
  c.search.selection = "probe"
  return c
