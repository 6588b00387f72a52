"""Where a method changes the course of a search, beyond the parts of its step: small
hooks that the search driver (`dnas.search_lib`) calls at fixed points, one set built
afresh for each run of the loop. A method that needs none has none; the defaults do
nothing.

  run_config(config, meta)      the config this run searches with (a stage's supernet,
                                a decay after rollbacks): called with the latest
                                checkpoint's meta to build the supernet, then with the
                                restored checkpoint's meta for the run's settings
  epochs(config, meta)          the epochs [start, end) this run covers
  keep_period(config, steps)    checkpoints to keep every N steps (None: only the last K)
  check_restored(run, latest, found)   refuse a restored checkpoint that does not fit
  end_epoch(run, state, epoch, record) add to the epoch's record; record["stop"] = True
                                ends this run after the epoch
  after_run(run, state, meta)   True: the checkpoints were rewritten and the search runs
                                again from the latest ("go on from checkpoint X with these
                                settings"): a rollback, the next stage
  final_arch(run, meta)         the architecture as JSON data instead of the selection's
"""

from typing import Any, Callable, NamedTuple


class SearchRun(NamedTuple):
  """What the hooks may read of one run of the search.

  config: the run's config (after `run_config`); user_config: the config as given;
  model: the space's section of `config` (`dnas.config.space_section`).
  space: the search space; info: the data set's `DatasetInfo`.
  ckpt_dir: the checkpoint directory; steps_per_epoch: steps per epoch; mesh: the
    device mesh.
  loss_fn: `bilevel.make_loss_fn` of the supernet (params, alphas, stats, batch, inputs).
  arch_batch(): the first batch of the architecture split, unaugmented, on the mesh.
  fresh_state(config) -> SearchState: a new search state of `config`'s supernet and
    optimisers on the host (the structure and shapes a checkpoint of that config has).
  meta: the loop's meta (records of the finished epochs, ...), updated as it runs.
  """
  config: Any
  user_config: Any
  model: Any
  space: Any
  info: Any
  ckpt_dir: str
  steps_per_epoch: int
  mesh: Any
  loss_fn: Callable
  arch_batch: Callable
  fresh_state: Callable
  meta: dict


class SearchHooks:
  """The hooks' defaults: a search of one run over all epochs, nothing added."""

  def run_config(self, config, meta: dict | None):
    del meta
    return config

  def epochs(self, config, meta: dict | None) -> tuple[int, int] | None:
    del config, meta
    return None

  def keep_period(self, config, steps_per_epoch: int) -> int | None:
    del config, steps_per_epoch
    return None

  def check_restored(self, run: SearchRun, latest: dict | None, found: dict | None) -> None:
    del run, latest, found

  def end_epoch(self, run: SearchRun, state, epoch: int, record: dict) -> None:
    del run, state, epoch, record

  def after_run(self, run: SearchRun, state, meta: dict) -> bool:
    del run, state, meta
    return False

  def final_arch(self, run: SearchRun, meta: dict) -> dict | None:
    del run, meta
    return None
