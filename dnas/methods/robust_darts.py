"""RobustDARTS (Zela et al., ICLR 2020; automl/RobustDARTS): the Hessian's largest
eigenvalue in alpha as the collapse signal (`search.hessian_every`), DARTS-ES (stop and
take the architecture of the epoch before the eigenvalue took off, `search.early_stop`)
and DARTS-ADA (go back to that epoch and go on with a larger weight decay,
`search.ada`). The eigenvalue itself is `dnas.hessian`; the rules and the search hooks
are here (`RobustDartsHooks`), with their settings in `config.robust_darts`.
"""

import jax
import tqdm

from dnas import hessian, optim
from dnas.checkpoint import Checkpointer
from dnas.errors import ConfigError, non_negative, positive
from dnas.methods.hooks import SearchHooks, SearchRun


def early_stop_epoch(epochs, eigenvalues, *, window: int = 5, delta: int = 4,
                     factor: float = 1.3, min_epoch: int = 10) -> int | None:
  """DARTS-ES (RobustDARTS Sec. 4.2): with the eigenvalues measured at `epochs` (every
  few epochs), their local average over the last `window` measurements; stop when it has
  grown by more than `factor` over the local average `delta` measurements earlier, and
  go back to that earlier epoch (if it is at least `min_epoch`). Returns the epoch to
  take the architecture from, or None (go on). The official values: window 5, delta 4,
  factor 1.3 (a ratio of 0.75 in the paper's terms)."""
  ev = [float(e) for e in eigenvalues]
  if len(ev) < window + delta:
    return None
  local = [sum(ev[i - window + 1:i + 1]) / window for i in range(window - 1, len(ev))]
  past = local[-1 - delta]
  stop = epochs[len(ev) - 1 - delta]
  if stop >= min_epoch and past > 0 and local[-1] / past > factor:
    return int(stop)
  return None


def ada_weight_decay(weight_decay: float, *, mul_factor: float = 3.0,
                     max_weight_decay: float = 243e-4) -> float | None:
  """DARTS-ADA (RobustDARTS Sec. 5.2): the weight decay after one more rollback, or None
  when it would pass `max_weight_decay` (the official loop stops adapting once the decay
  has reached it: 3e-4 -> 9e-4 -> ... -> 243e-4, four rollbacks)."""
  new = weight_decay * mul_factor
  return new if new <= max_weight_decay * (1 + 1e-9) else None


def validate(c: dict) -> None:
  """One ConfigError line per mistake in the settings of the eigenvalue, DARTS-ES and
  DARTS-ADA (`c`: the flattened config, `dnas.errors.flatten`)."""
  non_negative(c, "search.hessian_every")
  positive(c, "search.hessian_iters", int)
  if c["search.early_stop"] and not c["search.hessian_every"]:
    raise ConfigError("search.early_stop (DARTS-ES) needs search.hessian_every > 0: it "
                      "stops on the Hessian's eigenvalue")
  if c["search.ada"] and not c["search.hessian_every"]:
    raise ConfigError("search.ada (DARTS-ADA) needs search.hessian_every > 0: it goes "
                      "back on the Hessian's eigenvalue")
  if c["search.ada"] and c["search.early_stop"]:
    raise ConfigError("search.ada and search.early_stop exclude each other: DARTS-ES "
                      "stops where DARTS-ADA goes back and on; set one")
  for k in ("window", "delta"):
    positive(c, f"robust_darts.{k}", int)
  non_negative(c, "robust_darts.es_start_epoch")
  non_negative(c, "robust_darts.factor")
  if c["robust_darts.mul_factor"] <= 1:
    raise ConfigError(f"robust_darts.mul_factor {c['robust_darts.mul_factor']} must be > 1 "
                      f"(DARTS-ADA increases the weight decay)")
  non_negative(c, "robust_darts.max_weight_decay")


# The meta key of DARTS-ADA checkpoints whose optimiser state holds the weight decay.
_DECAY_IN_STATE = "weight_decay_in_state"


def _check_decay_in_state(meta: dict | None) -> None:
  if meta is not None and not meta.get(_DECAY_IN_STATE):
    raise ConfigError("the checkpoints of this DARTS-ADA search were written by a dnas that "
                      "kept the weight decay in the program, not in the optimiser state; "
                      "finish it with that version (dnas 0.1.0) or search again in a new "
                      "--workdir")


class RobustDartsHooks(SearchHooks):
  """The eigenvalue every `search.hessian_every` epochs on one fixed batch of the
  architecture split (the same batch each time: a trajectory), and DARTS-ES or
  DARTS-ADA on it."""

  def __init__(self):
    self._eigenvalue = self._batch = None

  def run_config(self, config, meta):
    # DARTS-ADA's decay after its rollbacks so far (the checkpoint's meta says how many).
    # Called with the latest checkpoint's meta before any state is restored.
    if config.search.ada:
      _check_decay_in_state(meta)
    if not meta or not meta.get("ada"):
      return config
    c = config.copy_and_resolve_references()
    c.search.weight_decay = meta["ada"][-1]["weight_decay"]
    return c

  def check_restored(self, run, latest, found):
    # `run_config` refused an older layout; this run's checkpoints say where the decay is.
    if run.config.search.ada:
      run.meta[_DECAY_IN_STATE] = True

  def keep_period(self, config, steps_per_epoch):
    # DARTS-ADA goes back to an epoch whose eigenvalue was measured: those checkpoints stay.
    s = config.search
    return s.hessian_every * steps_per_epoch if s.ada else None

  def end_epoch(self, run: SearchRun, state, epoch, record):
    s, rd = run.config.search, run.config.robust_darts
    if s.ada:
      record["weight_decay"] = s.weight_decay
    if (epoch + 1) % s.hessian_every:
      return
    if self._eigenvalue is None:
      self._eigenvalue = hessian.make_eigenvalue_fn(run.loss_fn, s.hessian_iters)
      self._batch = run.arch_batch()
    record["hessian_max_eig"] = float(self._eigenvalue(state, self._batch,
                                                       jax.random.key(epoch)))
    if not (s.early_stop or s.ada):
      return
    past = [r for r in run.meta["records"] if "hessian_max_eig" in r] + [record]
    stop = early_stop_epoch([r["epoch"] for r in past], [r["hessian_max_eig"] for r in past],
                            window=rd.window, delta=rd.delta, factor=rd.factor,
                            min_epoch=rd.es_start_epoch)
    if stop is None:
      return
    if s.early_stop:
      record.update(early_stop_epoch=stop, stop=True)
      tqdm.tqdm.write(f"DARTS-ES: the Hessian's eigenvalue grew by more than {rd.factor}x; "
                      f"stopping, with the architecture of epoch {stop}")
      return
    new = ada_weight_decay(s.weight_decay, mul_factor=rd.mul_factor,
                           max_weight_decay=rd.max_weight_decay)
    if new is not None:  # DARTS-ADA: back to `stop`, on with more decay
      record.update(ada_rollback=stop, ada_weight_decay=new, stop=True)
      tqdm.tqdm.write(f"DARTS-ADA: the Hessian's eigenvalue grew by more than {rd.factor}x; "
                      f"going back to epoch {stop} with weight decay {new:.4g} "
                      f"(was {s.weight_decay:.4g})")

  def after_run(self, run: SearchRun, state, meta):
    """DARTS-ADA: makes the checkpoint of epoch `ada_rollback` the latest, its meta noting
    the rollback and the new weight decay, so that the search goes on from there. A kill
    in between leaves an earlier checkpoint the latest: the resumed run repeats the
    epochs to the rollback exactly and decides it again."""
    last = meta["records"][-1] if meta["records"] else {}
    if "ada_rollback" not in last:
      return False
    ckpt = Checkpointer(run.ckpt_dir, keep=run.config.checkpoint.keep,
                        keep_period=self.keep_period(run.config, run.steps_per_epoch))
    back = (last["ada_rollback"] + 1) * run.steps_per_epoch  # its epoch-end checkpoint
    kept, old = ckpt.restore(back, state)
    # The decay is state (`optim.make_w_tx(weight_decay_in_state=True)`): the next run
    # steps the same compiled programs with it.
    kept = kept._replace(w_opt_state=optim.set_weight_decay(kept.w_opt_state,
                                                            last["ada_weight_decay"]))
    old = dict(old, ada=old.get("ada", []) + [dict(
        epoch=last["epoch"], rollback=last["ada_rollback"],
        weight_decay=last["ada_weight_decay"])])
    ckpt.delete_from(back)
    ckpt.save(back, kept, old)
    ckpt.close()
    return True

  def final_arch(self, run: SearchRun, meta):
    # DARTS-ES: the architecture of the epoch it went back to.
    stopped_at = meta["records"][-1].get("early_stop_epoch") if meta["records"] else None
    return None if stopped_at is None else meta["records"][stopped_at]["genotype"]
