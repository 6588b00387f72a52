"""Checkpoints that let a search or a retraining survive any crash (Orbax).

A checkpoint is one Orbax step directory holding three items:
  packed  the arrays a step reads and writes (weights, BatchNorm statistics, alphas, both
          optimiser states, RNG key data, step counter), leaves of equal shape, dtype and
          sharding stacked into one array each
  layout  JSON: each leaf's path, shape and dtype, its stack and place in it, in order
          (what the stacks unpack to; a run laid out on another mesh unpacks them too)
  meta    a JSON dict: data-iterator position (epoch, batch within the epoch), partial
          epoch sums, metric history, elapsed time

Orbax's cost is per array: a save of the default search state's 2,962 leaves held the
loop's thread for 1.4 s, of its 27 stacks for 0.1 s (`scripts/bench_checkpoint.py`;
BUILD_NOTES.md, "Checkpoint cost"). Checkpoints written before the stacking, with one
item `state` (the pytree itself), still restore.

Orbax writes each step into a temporary directory and renames it when complete, so a
kill mid-write never leaves a half checkpoint that looks finished. A finished one that
cannot be read any more (truncated or edited files) is reported in one line and the
previous one is used; only the keep-K policy and `delete_from` (DARTS-ADA going back)
delete checkpoints.

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
  found = ckpt.restore_latest(target)        # None, or (step, state, meta)
  ckpt.save(step, state, meta)               # asynchronous
  ckpt.close()                               # waits for pending writes
"""

import copy
import functools
import logging
import os
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dnas.parallel import stacked_sharding

_log = logging.getLogger(__name__)


def _layout(leaves_with_paths, groups=None) -> list:
  """[[path, shape, dtype, stack, position in the stack], ...] of a flattened state, in
  its order (without `groups`, the first three only)."""
  where = {i: (k, j) for k, g in enumerate(groups or ()) for j, i in enumerate(g)}
  return [[jax.tree_util.keystr(p), list(x.shape), str(x.dtype), *where.get(i, ())]
          for i, (p, x) in enumerate(leaves_with_paths)]


def _saved_groups(layout: list) -> tuple:
  """The stacks of a saved layout: each stack's leaf indices in stack order. The saving
  run's (its shardings may have grouped the leaves otherwise than this run's)."""
  groups: dict = {}
  for i, (*_, k, j) in enumerate(layout):
    groups.setdefault(k, {})[j] = i
  return tuple(tuple(g[j] for j in range(len(g))) for _, g in sorted(groups.items()))


def _groups(leaves) -> list[list[int]]:
  """Indices of the leaves that stack together: equal shape, dtype and sharding, in order
  of first appearance."""
  groups: dict = {}
  for i, x in enumerate(leaves):
    groups.setdefault((tuple(x.shape), x.dtype, x.sharding), []).append(i)
  return list(groups.values())


@functools.lru_cache(maxsize=8)
def _packer(groups: tuple, out_shardings: tuple):
  # New buffers even for a group of one: the write is asynchronous and the steps donate
  # the state's buffers.
  return jax.jit(lambda leaves: [jnp.stack([leaves[i] for i in g]) for g in groups],
                 out_shardings=list(out_shardings))


@functools.lru_cache(maxsize=8)
def _unpacker(groups: tuple, out_shardings: tuple):
  def unpack(stacks):
    leaves = [None] * sum(map(len, groups))
    for g, b in zip(groups, stacks):
      for j, i in enumerate(g):
        leaves[i] = b[j]
    return leaves
  return jax.jit(unpack, out_shardings=list(out_shardings))


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_saveable(tree):
  """Typed PRNG keys -> their uint32 key data (Orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_saveable(tree, like):
  """Inverse of `to_saveable`, with `like` (the original tree) giving the key leaves."""
  return jax.tree.map(
      lambda x, l: jax.random.wrap_key_data(x, impl=jax.random.key_impl(l)) if _is_key(l) else x,
      tree, like)


class Checkpointer:
  """Keeps the last `keep` checkpoints of a run in `directory` (and, with `keep_period`,
  every one whose step is a multiple of it); asynchronous saves."""

  def __init__(self, directory: str, *, keep: int = 3, keep_period: int | None = None):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = directory
    # Every item's handler, so that a new manager reads any checkpoint's metadata (which
    # items it has) without a warning per item.
    self._mngr = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period, create=True,
            enable_async_checkpointing=True),
        item_handlers=dict(packed=ocp.StandardCheckpointHandler(),
                           state=ocp.StandardCheckpointHandler(),
                           layout=ocp.JsonCheckpointHandler(),
                           meta=ocp.JsonCheckpointHandler()))

  def steps(self) -> list[int]:
    """Finished checkpoints, oldest first."""
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts writing checkpoint `step`; returns once the arrays are copied. A step
    that already has a checkpoint keeps it (returns False): nothing is rewritten.

    The arrays are first stacked on device into new buffers: the step functions donate
    their input state, and an asynchronous write must not read a buffer that the next
    step reuses.
    `meta` is copied too: Orbax may serialise it after this returns, while the loop
    already adds the next step's metrics to its nested sums (a resumed run then counted
    one step twice in its epoch means: seen once in test_resume's retraining kill).
    """
    if step in self._mngr.all_steps():
      return False
    meta = copy.deepcopy(meta)
    with_paths = jax.tree_util.tree_leaves_with_path(to_saveable(state))
    leaves = [x for _, x in with_paths]
    groups = tuple(map(tuple, _groups(leaves)))
    stacks = _packer(groups, tuple(stacked_sharding(leaves[g[0]].sharding)
                                   for g in groups))(leaves)
    return self._mngr.save(step, args=ocp.args.Composite(
        packed=ocp.args.StandardSave({str(k): b for k, b in enumerate(stacks)}),
        layout=ocp.args.JsonSave(_layout(with_paths, groups)), meta=ocp.args.JsonSave(meta)),
        force=True)

  def restore_latest(self, target):
    """(step, state, meta) of the newest readable checkpoint, or None if there is none.

    `target` is a state pytree of the right structure, shapes and shardings (for example
    the freshly initialised state); the restored arrays take its shardings.
    """
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"dnas: warning: checkpoint {step} in {self.directory} is unreadable "
              f"({type(e).__name__}: {reason}); trying the previous one", file=sys.stderr)
        continue
      return step, state, meta
    return None

  def restore(self, step: int, target):
    """(state, meta) of checkpoint `step`, laid out like `target`; raises if unreadable."""
    if "packed" not in self._mngr.item_metadata(step):  # written before the stacking
      restored = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(to_saveable(target)), meta=ocp.args.JsonRestore()))
      state = from_saveable(restored["state"], target)
      _check_same_structure(state, target)
      return state, restored["meta"]
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(to_saveable(target))
    leaves = [x for _, x in with_paths]
    layout = self._mngr.restore(step, args=ocp.args.Composite(
        layout=ocp.args.JsonRestore()))["layout"]
    _check_same_layout([entry[:3] for entry in layout], _layout(with_paths))
    # A layout of [path, shape, dtype] only (the first stacked checkpoints) was grouped
    # as this run groups.
    groups = (_saved_groups(layout) if all(len(e) == 5 for e in layout)
              else tuple(map(tuple, _groups(leaves))))
    abstract = {str(k): jax.ShapeDtypeStruct(
        (len(g), *leaves[g[0]].shape), leaves[g[0]].dtype,
        sharding=stacked_sharding(leaves[g[0]].sharding)) for k, g in enumerate(groups)}
    restored = self._mngr.restore(step, args=ocp.args.Composite(
        packed=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    stacks = [restored["packed"][str(k)] for k in range(len(groups))]
    unpacked = _unpacker(groups, tuple(x.sharding for x in leaves))(stacks)
    return from_saveable(treedef.unflatten(unpacked), target), restored["meta"]

  def latest_meta(self) -> dict | None:
    """The meta of the newest checkpoint whose meta is readable, or None: what a run
    reads before it can build the state to restore (DrNAS's stage)."""
    for step in reversed(self.steps()):
      try:
        return self._mngr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
      except Exception:  # pylint: disable=broad-except
        continue
    return None

  def delete_from(self, step: int) -> None:
    """Deletes checkpoint `step` and every later one (a search that goes back in time:
    DARTS-ADA's rollback)."""
    self._mngr.wait_until_finished()
    for s in self.steps():
      if s >= step:
        self._mngr.delete(s)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def _check_same_layout(saved: list, run: list) -> None:
  if len(saved) != len(run):
    raise ValueError(f"checkpoint holds a different state structure ({len(saved)} arrays "
                     f"where the run has {len(run)})")
  for (path, shape, dtype), (run_path, run_shape, run_dtype) in zip(saved, run):
    if [path, shape, dtype] != [run_path, run_shape, run_dtype]:
      raise ValueError(f"checkpoint array {tuple(shape)} {dtype} where the run has "
                       f"{tuple(run_shape)} {run_dtype} ({path}; the run's {run_path})")


def _check_same_structure(state, target) -> None:
  if jax.tree.structure(state) != jax.tree.structure(target):
    raise ValueError("checkpoint holds a different state structure")
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
    if a.shape != b.shape or a.dtype != b.dtype:
      raise ValueError(f"checkpoint array {a.shape} {a.dtype} where the run has "
                       f"{b.shape} {b.dtype}")


def save_model(directory: str, variables, *, genotype: dict, config: dict) -> None:
  """A trained final network as one Orbax checkpoint: its variables (`nnx.State`:
  parameters and BatchNorm statistics), and the genotype and config (JSON) that
  rebuild it (`dnas.export.load_trained`). Blocks until written."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
    c.save(directory, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), genotype=ocp.args.JsonSave(genotype),
        config=ocp.args.JsonSave(config)), force=True)


def load_model_meta(directory: str) -> tuple[dict, dict]:
  """(genotype, config) dicts of a `save_model` checkpoint."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
    out = c.restore(directory, args=ocp.args.Composite(genotype=ocp.args.JsonRestore(),
                                                       config=ocp.args.JsonRestore()))
  return out["genotype"], out["config"]


def model_variable_shapes(directory: str) -> dict[str, tuple[int, ...]]:
  """{'a/b/c': shape} of the variables in a `save_model` checkpoint, from its metadata
  (nothing is read)."""
  quiet = logging.getLogger("absl")
  level = quiet.level
  quiet.setLevel(logging.ERROR)  # Orbax warns that the item has no step metadata
  try:
    with ocp.StandardCheckpointer() as c:
      tree = c.metadata(os.path.join(directory, "variables")).item_metadata.tree
  finally:
    quiet.setLevel(level)
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    out["/".join(names[:-1] if names[-1] == "value" else names)] = tuple(leaf.shape)
  return out


def load_model_variables(directory: str, target):
  """The variables of a `save_model` checkpoint, restored like `target` (an `nnx.State`
  of abstract or concrete arrays: structure, shapes, dtypes, shardings)."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
    out = c.restore(directory, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(target)))
  return out["variables"]
