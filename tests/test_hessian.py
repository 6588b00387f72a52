"""The Hessian's dominant eigenvalue (RobustDARTS's signal) against a dense
eigendecomposition."""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from dnas import hessian
from dnas.methods import robust_darts


def test_lanczos_matches_a_dense_eigendecomposition():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((12, 12))
  m = (a + a.T) / 2
  got = hessian.lanczos_max_eigenvalue(lambda v: jnp.asarray(m, jnp.float32) @ v, 12,
                                       jax.random.key(1), 12)
  assert float(got) == pytest.approx(np.linalg.eigvalsh(m).max(), rel=1e-4)


def test_max_eigenvalue_of_a_loss_hessian_in_a_pytree():
  # A small nonlinear loss in a pytree of two arrays (as the alphas of two cell types):
  # its Hessian by jax.hessian, densely, against Lanczos on Hessian-vector products.
  rng = np.random.default_rng(1)
  x = {"a": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
       "b": jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)}
  target = jnp.asarray(rng.standard_normal(6), jnp.float32)

  def loss(x):
    feats = jnp.concatenate([jax.nn.softmax(x["a"]) @ jnp.arange(4.0),
                             jnp.tanh(x["b"]).sum(-1) * 2.0, jnp.array([0.5])])
    return jnp.sum((feats - target) ** 2) + jnp.sum(jax.nn.logsumexp(x["a"], -1))
  flat, unravel = ravel_pytree(x)
  dense = jax.hessian(lambda f: loss(unravel(f)))(flat)
  want = np.linalg.eigvalsh(np.asarray(dense, np.float64)).max()
  got = hessian.max_eigenvalue(loss, x, jax.random.key(2), iters=flat.size)
  assert float(got) == pytest.approx(want, rel=1e-3, abs=1e-4)
  # Fewer iterations approach it from below (Ritz values lie inside the spectrum).
  assert float(hessian.max_eigenvalue(loss, x, jax.random.key(2), iters=8)) <= want + 1e-4


def test_darts_es_stops_when_the_local_average_grows_by_the_factor():
  epochs = list(range(0, 40, 2))
  flat = [1.0] * 20
  assert robust_darts.early_stop_epoch(epochs, flat) is None
  # Constant, then doubling from the 14th measurement (epoch 26): as the search calls it
  # after each measurement, it first fires at the 15th (epoch 28), whose window (1, 1, 1,
  # 2, 4: 1.8) is > 1.3x the window 4 measurements earlier (1.0); it goes back to epoch 20.
  rising = [1.0] * 13 + [2.0, 4.0, 8.0]
  fired = [(n, robust_darts.early_stop_epoch(epochs[:n], rising[:n])) for n in range(1, 17)]
  first = next((n, e) for n, e in fired if e is not None)
  assert first == (15, 20)
  # Not before min_epoch: the same rise early in the search goes on.
  assert robust_darts.early_stop_epoch(epochs[:10], [1.0] * 6 + [2.0, 4.0, 8.0, 16.0],
                                  min_epoch=30) is None


def test_darts_ada_multiplies_the_decay_up_to_its_maximum():
  # The official schedule: 3e-4 times 3 per rollback, four rollbacks up to 243e-4.
  wd, seen = 3e-4, []
  while (wd := robust_darts.ada_weight_decay(wd)) is not None:
    seen.append(wd)
  np.testing.assert_allclose(seen, [9e-4, 27e-4, 81e-4, 243e-4], rtol=1e-12)
  assert robust_darts.ada_weight_decay(5e-4, mul_factor=2.0, max_weight_decay=1e-3) == 1e-3
  assert robust_darts.ada_weight_decay(5e-4, mul_factor=2.0, max_weight_decay=9e-4) is None


def test_epoch_loop_stops_on_a_stop_record_and_stays_stopped(tmp_path):
  # DARTS-ES ends the search through the loop: a record with "stop" ends the run after its
  # epoch (checkpointed); resuming that run does no more epochs.
  from dnas import loop  # pylint: disable=g-import-not-at-top
  from dnas.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  def run(meta):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    epochs_seen = []

    def end_epoch(state, epoch, means):
      epochs_seen.append(epoch)
      return dict(means, epoch=epoch, stop=epoch == 2)
    with loop.Preemption() as preemption:
      runner = loop.EpochLoop(name="t", workdir=str(tmp_path), ckpt=ckpt, meta=meta,
                              epochs=6, steps_per_epoch=2, every_steps=0,
                              preemption=preemption, metrics_file="m.jsonl", progress=False)
      state = runner.run({"x": jnp.zeros(())}, lambda e, s: iter([None] * 2),
                         lambda st, b, e, i: ({"x": st["x"] + 1}, {"loss": st["x"]}),
                         end_epoch)
    return state, epochs_seen

  meta = dict(epoch=0, batch=0, sums={}, records=[], elapsed=0.0)
  state, seen = run(meta)
  assert seen == [0, 1, 2] and float(state["x"]) == 6 and meta["stopped"]
  assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3
  _, seen = run(meta)  # the restored meta of a stopped run
  assert seen == []
