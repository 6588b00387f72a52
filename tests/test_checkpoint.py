"""The Checkpointer: round trip with typed PRNG keys, keep-K (and keep-period), no rewrite
of a step, going back (delete_from), a corrupt newest checkpoint reported in one line and
skipped for the previous one, leaves stacked by shape (and checkpoints written before the
stacking still restored)."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dnas import checkpoint
from dnas.checkpoint import Checkpointer, to_saveable


def _state(rng):
  return {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
          "step": jnp.asarray(rng.integers(0, 100), jnp.int32),
          "key": jax.random.key(int(rng.integers(0, 2**31)))}


def _equal(a, b):
  assert np.array_equal(a["w"], b["w"]) and int(a["step"]) == int(b["step"])
  assert np.array_equal(jax.random.key_data(a["key"]), jax.random.key_data(b["key"]))


def test_round_trip_keep_k_and_corrupt_newest_falls_back(tmp_path, capsys):
  rng = np.random.default_rng(1)
  states = [_state(rng) for _ in range(4)]
  ckpt = Checkpointer(str(tmp_path), keep=3)
  for i, st in enumerate(states):
    assert ckpt.save(i + 1, st, {"epoch": i, "history": [0.1, 1 / 3]})
  assert not ckpt.save(4, states[0], {})  # a step's checkpoint is never rewritten
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path), keep=3)
  assert ckpt.steps() == [2, 3, 4]  # keep K
  step, restored, meta = ckpt.restore_latest(states[0])
  assert step == 4 and meta == {"epoch": 3, "history": [0.1, 1 / 3]}
  _equal(restored, states[3])
  for f in glob.glob(os.path.join(tmp_path, "4", "packed", "**"), recursive=True):
    if os.path.isfile(f):
      with open(f, "wb") as fh:
        fh.write(b"\0garbage")
  step, restored, meta = ckpt.restore_latest(states[0])
  assert step == 3 and meta["epoch"] == 2
  _equal(restored, states[2])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"dnas: warning: checkpoint 4 in {tmp_path} is "
                                             f"unreadable") and "previous one" in err[0]
  assert sorted(os.listdir(tmp_path)).count("4") == 1  # reported, not deleted
  ckpt.close()


def test_keep_period_keeps_multiples_and_delete_from_goes_back(tmp_path):
  # DARTS-ADA's rollback: the epoch-end checkpoints it may go back to stay (keep_period),
  # and going back deletes that checkpoint and every later one.
  rng = np.random.default_rng(3)
  states = [_state(rng) for _ in range(7)]
  ckpt = Checkpointer(str(tmp_path), keep=1, keep_period=2)
  for i, st in enumerate(states):
    ckpt.save(i + 1, st, {"epoch": i})
  ckpt.wait()
  assert ckpt.steps() == [2, 4, 6, 7]
  restored, meta = ckpt.restore(4, states[0])
  assert meta == {"epoch": 3}
  _equal(restored, states[3])
  ckpt.delete_from(4)
  assert ckpt.steps() == [2]
  assert ckpt.save(4, restored, {"epoch": 3, "ada": [1]})  # rewritten with the new meta
  ckpt.close()
  step, _, meta = Checkpointer(str(tmp_path), keep=1).restore_latest(states[0])
  assert step == 4 and meta == {"epoch": 3, "ada": [1]}


def test_meta_is_saved_as_it_was_when_save_returned(tmp_path):
  # Orbax writes the JSON meta after save() returns; the loop goes on adding the next
  # step's metrics to meta's nested sums. The checkpoint must hold the sums of its step.
  ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=3)
  state = {"w": jnp.ones((256,))}
  for step in range(1, 6):
    meta = {"sums": {"loss": float(step)}}
    ckpt.save(step, state, meta)
    meta["sums"]["loss"] = -1.0  # the next step's settle, right after the save
  ckpt.close()
  got = Checkpointer(str(tmp_path / "ckpt"), keep=3)
  step, _, restored = got.restore_latest(state)
  got.close()
  assert step == 5 and restored["sums"]["loss"] == 5.0


def _many(rng):
  # Leaves of three shapes and two dtypes, interleaved, and a key: several stacks.
  return {"layers": [{"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(2), jnp.float32),
                      "count": jnp.asarray(rng.integers(0, 9, 2), jnp.int32)}
                     for _ in range(5)],
          "head": jnp.asarray(rng.standard_normal((4, 2)), jnp.float32),
          "key": jax.random.key(7)}


def _assert_equal_trees(a, b):
  a, b = to_saveable(a), to_saveable(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)


def test_leaves_are_stacked_by_shape_and_restored_bitwise(tmp_path):
  rng = np.random.default_rng(5)
  state = _many(rng)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, state, {"epoch": 0})
  ckpt.close()
  # 17 leaves in 5 stacks: kernels, biases, counts, the head, the key data.
  with ocp.PyTreeCheckpointer() as c:
    stacks = c.metadata(os.path.join(tmp_path, "1", "packed")).item_metadata.tree
  assert sorted(tuple(x.shape) for x in stacks.values()) == sorted(
      [(5, 3, 3, 2, 2), (5, 2), (5, 2), (1, 4, 2), (1, 2)])
  ckpt = Checkpointer(str(tmp_path), keep=2)
  step, restored, meta = ckpt.restore_latest(_many(np.random.default_rng(6)))
  ckpt.close()
  assert step == 1 and meta == {"epoch": 0}
  _assert_equal_trees(restored, state)


def test_checkpoint_of_another_structure_is_refused_naming_the_array(tmp_path):
  rng = np.random.default_rng(8)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, _many(rng), {})
  ckpt.wait()
  other = _many(rng)
  other["head"] = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match=r"checkpoint array \(4, 2\) float32 where the run has "
                                       r"\(4, 3\) float32 \(\['head'\]; the run's \['head'\]\)"):
    ckpt.restore(1, other)
  other = _many(rng)
  other["layers"].pop()
  with pytest.raises(ValueError, match="different state structure"):
    ckpt.restore(1, other)
  ckpt.close()


def test_checkpoint_written_before_the_stacking_still_restores(tmp_path):
  # The layout of earlier runs: one item `state` holding the pytree itself.
  rng = np.random.default_rng(9)
  state = _many(rng)
  mngr = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(to_saveable(state)),
                                       meta=ocp.args.JsonSave({"epoch": 2})))
  mngr.wait_until_finished()
  mngr.close()
  ckpt = Checkpointer(str(tmp_path), keep=2)
  step, restored, meta = ckpt.restore_latest(_many(np.random.default_rng(10)))
  assert step == 3 and meta == {"epoch": 2}
  _assert_equal_trees(restored, state)
  ckpt.save(4, restored, {"epoch": 3})  # and the run goes on in the stacked layout
  ckpt.close()
  assert os.path.isdir(os.path.join(tmp_path, "4", "packed"))


def _saved_once(directory, seed):
  """A `_many` state saved as checkpoint 1 in `directory`, written; -> the state."""
  state = _many(np.random.default_rng(seed))
  ckpt = Checkpointer(str(directory), keep=2)
  ckpt.save(1, state, {})
  ckpt.close()
  return state


def test_stacks_restore_into_a_run_whose_shardings_group_the_leaves_otherwise(tmp_path):
  # A run resumed on another mesh: its leaves' shardings may differ where the saving
  # run's were equal. The stacks are the saving run's, unpacked into the new shardings.
  state = _saved_once(tmp_path, seed=11)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  named = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = _many(np.random.default_rng(12))
  target["layers"][1]["kernel"] = jax.device_put(target["layers"][1]["kernel"], named)
  leaves = jax.tree.leaves(to_saveable(target))
  assert len(checkpoint._groups(leaves)) == len(checkpoint._groups(  # pylint: disable=protected-access
      jax.tree.leaves(to_saveable(state)))) + 1
  restored, _ = ckpt.restore(1, target)
  ckpt.close()
  _assert_equal_trees(restored, state)
  assert restored["layers"][1]["kernel"].sharding == named


def test_layout_without_stack_places_restores_grouped_as_the_run_groups(tmp_path):
  # The first stacked checkpoints wrote [path, shape, dtype] per leaf: they were grouped
  # as a run on the same devices groups.
  state = _saved_once(tmp_path, seed=13)
  path = os.path.join(tmp_path, "1", "layout", "metadata")
  with open(path) as f:
    layout = json.load(f)
  with open(path, "w") as f:
    json.dump([e[:3] for e in layout], f)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  restored, _ = ckpt.restore(1, _many(np.random.default_rng(14)))
  ckpt.close()
  _assert_equal_trees(restored, state)
