"""The search behind `python -m dnas.search`: set up, run the epoch loop, select, write.

Data -> the space's supernet -> bilevel steps (`dnas.bilevel`, built from the method's
parts, `dnas.methods.build`) -> each epoch's derived architecture -> the selection
(`dnas.selection`) -> genotype.json, metrics.jsonl, alphas.png in the work directory.
Nothing here knows the space (the search-space protocol, `dnas.spaces.base`) or the
method: a method that changes the course of the search does it through its hooks
(`dnas.methods.hooks`), which may ask for another run from a rewritten checkpoint
(DARTS-ADA's rollback, DrNAS's next stage).
"""

import functools
import itertools
import json
import os
import sys
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from dnas import (bilevel, config as config_lib, cpu, execution, hypergrad, kernels,
                  latency as latency_lib, loop, methods, optim, parallel, plotting, selection,
                  spaces, utils)
from dnas.arch import op_weights
from dnas.checkpoint import Checkpointer
from dnas.data.pipeline import (DatasetInfo, auto_workers, eval_batch_spec, get_dataset,
                                make_augment, make_batches, search_splits)
from dnas.evaluation import evaluate, make_eval_step


def run_search(config, workdir: str, progress: bool = True, resume: bool = True):
  """Runs the search of `config` and writes its results into `workdir`.

  Checkpoints (everything a step reads, the data position and the metric history) go to
  `workdir/checkpoints` every `config.checkpoint.every_steps` steps and at each epoch
  end; with `resume`, a run found there is continued exactly where it stopped. SIGTERM
  saves a checkpoint and raises `loop.Preempted`.

  Returns the final architecture (the space's type, e.g. `darts.Genotype`).
  """
  # SIGTERM from the start: one arriving while data load or compilation runs is answered
  # after the first step, with a checkpoint.
  with loop.Preemption() as preemption:
    config_lib.validate(config, "search")
    loop.check_workdir(workdir)
    search = None
    while True:
      # Fresh hooks for each run (they may hold its programs); a run that steps the
      # programs of the one before (`Search(previous=...)`) keeps its hooks.
      search = Search(config, workdir, methods.hooks(config), resume=resume, previous=search)
      state, meta = search.run_epochs(preemption, progress)
      # A hook may rewrite the checkpoints and ask for another run from the latest.
      if not any(h.after_run(search.run, state, meta) for h in search.hooks):
        return search.select_and_write(state, meta)
      resume = True


def alpha_entropy(alphas: np.ndarray) -> float:
  """Mean over rows of the entropy (nats) of softmax(alpha), f32[E, K] -> float."""
  e = np.exp(alphas - alphas.max(-1, keepdims=True))
  p = e / e.sum(-1, keepdims=True)
  return float(np.mean(-np.sum(p * np.log(p + 1e-12), -1)))


def make_supernet(config, num_classes: int, in_channels: int) -> nnx.Module:
  """The supernet of `config.space` for images of `in_channels` and `num_classes`."""
  info = DatasetInfo("", (1, 1, in_channels), num_classes, (), ())
  return spaces.get(config.space).supernet(config_lib.space_section(config), info,
                                           nnx.Rngs(config.seed))


def optimizers(config, steps_per_epoch: int, parts: methods.Parts | None = None):
  """(weight lr schedule, weight optimiser, architecture optimiser) of the search."""
  s = config.search
  schedule = optim.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, steps_per_epoch)
  # DARTS-ADA changes the decay as it runs: it is kept in the state, not in the program.
  w_tx = optim.make_w_tx(schedule, s.momentum, s.weight_decay, s.grad_clip, s.nesterov,
                         weight_decay_in_state=s.ada)
  a_wd = s.a_weight_decay if parts is None or parts.a_weight_decay is None else (
      parts.a_weight_decay)
  a_tx = optim.make_a_tx(s.a_lr, s.a_b1, s.a_b2, a_wd)
  if parts is not None and parts.a_transform is not None:
    a_tx = optim.then(a_tx, parts.a_transform)
  return schedule, w_tx, a_tx


def latency_setup(config, info, workdir: str | None = None):
  """(table, latency model) for `config.latency`, or None when it names neither an
  objective nor a table. Without a table one is measured here (`latency.batch_size`, the
  config's dtype) and written to `workdir/latency_table.json`, which a resumed run reads
  back. The model (the space's) has `expected(alphas)`, `predict(arch)`, `minimum()`."""
  L, space = config.latency, spaces.get(config.space)
  if L.objective == "none" and not L.table and not L.limit_ms:
    return None
  path = L.table or (os.path.join(workdir, "latency_table.json") if workdir else "")
  if path and os.path.exists(path):
    table = latency_lib.LatencyTable.load(path)
    table.check(batch_size=L.batch_size, dtype=config.dtype, allow_foreign=L.allow_foreign_table)
  elif L.table:
    raise latency_lib.LatencyError(f"cannot read latency table {L.table}: no such file")
  elif jax.process_count() > 1:
    # Each host would time its own table, and their objectives would differ.
    raise latency_lib.LatencyError("a multi-host search needs latency.table: measure one "
                                   "with python -m dnas.latency profile and pass it")
  else:
    print(f"dnas: measuring a latency table for the final network on "
          f"{jax.devices()[0].device_kind} (batch {L.batch_size}, {config.dtype})",
          file=sys.stderr)
    table = space.latency_profile(config_lib.space_section(config), config.train, info,
                                  batch_size=L.batch_size, dtype=config.dtype,
                                  repeats=L.repeats, seed=config.seed)
    if path and jax.process_index() == 0:
      table.save(path)
  model = space.latency_model(table, config_lib.space_section(config), config.train, info)
  latency_lib.validate_settings(L.objective, L.weight, L.fbnet_alpha, L.fbnet_beta,
                                L.target_ms, min_latency_ms=model.minimum())
  if 0 < L.limit_ms < model.minimum():
    raise latency_lib.LatencyError(f"latency.limit_ms {L.limit_ms} is below the fastest "
                                   f"architecture's predicted {model.minimum():.4g} ms")
  return table, model


def make_arch_objective(config, latency_model):
  """The architecture step's objective(ce, alphas) -> (loss, metrics) of
  `config.latency`, or None."""
  L = config.latency
  objective = latency_lib.make_objective(L.objective, weight=L.weight,
                                         fbnet_alpha=L.fbnet_alpha, fbnet_beta=L.fbnet_beta,
                                         target_ms=L.target_ms)
  if objective and L.estimate == "derived":
    if not hasattr(latency_model, "derived"):
      raise config_lib.ConfigError(f"latency.estimate=derived: space {config.space!r} has no "
                                   f"derived latency estimate; valid there: expected")
    return latency_lib.arch_objective(objective, latency_model.derived)
  return objective and latency_lib.arch_objective(objective, latency_model.expected)


def compiled_steps(graphdef, state, w_tx, a_tx, *, order: str, hypergrad, arch_loss,
                   parts: methods.Parts, execution: execution.Execution,
                   weight_first: bool = False, cache_key: str | None = None):
  """(flat, search_step, warmup_step) as the search loop calls them, on the
  `execution.Flat` leaves of `state` (laid out by `execution.shardings`): each compiled
  on its first call.

  One program (the default off the CPU): a pure step that `flat.jit` compiles, the state
  stacked off the CPU. Split (`execution.split(order)`): a few programs jitted inside
  (`execution.split_piece`), the state as a tree at each call (a split step built
  unjitted would run eagerly, op by op; tests/test_search_lib.py checks that no step
  traces again once compiled). `cache_key` (`trace_key`): what the steps compute beyond
  dnas's code and their arguments, to keep the one-program steps' traces on disk
  (`dnas.trace_cache`); None: traced in every process.
  """
  split = execution.split(order)
  steps = bilevel.make_search_steps(
      graphdef, w_tx, a_tx, hypergrad=hypergrad, arch_loss=arch_loss,
      relaxation=parts.relaxation, perturb=parts.perturb, extra_inputs=parts.extra_inputs,
      execution=execution if split else execution._replace(jit=False),
      weight_first=weight_first)
  flat = loop.Flat(state, execution.shardings[0], stack=False if split else None)
  if split:
    return (flat, *map(flat.wrap, steps))
  # Traced for this process's devices: the kernels take the backend's own path.
  return (flat, *(cpu.compile_then_trim(flat.jit(
      kernels.for_local_devices(f), **bilevel.jit_shardings(execution.shardings, 2),
      cache_key=cache_key and f"{cache_key} {name}"))
                   for name, f in zip(("search step", "warm-up step"), steps)))


def _run_config(config, hooks, meta):
  """The config one run searches with: each hook's view of the latest checkpoint."""
  for h in hooks:
    config = h.run_config(config, meta)
  return config


def _program_config(config) -> str:
  """The config as far as the compiled steps depend on it: all of it, but for a weight
  decay that the optimiser keeps in its state (`search.ada`)."""
  c = config.to_dict()
  if c["search"]["ada"]:
    c["search"] = {k: v for k, v in c["search"].items() if k != "weight_decay"}
  return repr(c)


def trace_key(config, info: DatasetInfo, steps_per_epoch: int, latency) -> str:
  """What a search's steps compute beyond dnas's code and their arguments' shapes: the
  config (`_program_config`), the data's description, the epoch's length (schedules) and
  the latency table (`latency_setup`), as `compiled_steps`'s `cache_key`."""
  table = latency and json.dumps(dict(meta=latency[0].meta, entries=latency[0].entries),
                                 sort_keys=True, default=repr)
  return repr((_program_config(config), info, steps_per_epoch, table))


def load_supernet(config, workdir: str) -> nnx.Module:
  """The supernet of the search in `workdir` as its last checkpoint left it (weights,
  architecture parameters, BatchNorm state), in eval mode."""
  space = spaces.get(config.space)
  info, _ = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      keep=config.checkpoint.keep)
  config = _run_config(config, methods.hooks(config), ckpt.latest_meta())
  net = space.supernet(config_lib.space_section(config), info, nnx.Rngs(config.seed))
  _, w_tx, a_tx = optimizers(config, 1)  # the state's structure, not its schedule
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  found = ckpt.restore_latest(state)
  if found is None:
    raise FileNotFoundError(f"no search checkpoint in {workdir}")
  _, state, _ = found
  net = nnx.merge(graphdef, state.params, state.alphas, state.batch_stats)
  net.eval()
  return net


class Search:
  """One run of the search (all epochs, or the part of them that a hook assigns it):
  built from the config and the latest checkpoint, it runs the epoch loop
  (`run_epochs`), and after the last run selects and writes (`select_and_write`)."""

  def __init__(self, user_config, workdir: str, hooks, *, resume: bool,
               previous: "Search | None" = None):
    """`previous`: the run before, in the same process; its compiled steps and hooks are
    reused when this run's supernet and config differ from it in nothing that is part of
    a program (`_program_config`), and `self.reused` says so."""
    self.workdir, self.hooks = workdir, hooks
    space = self.space = spaces.get(user_config.space)
    info, splits = get_dataset(user_config.data.name, user_config.data.data_dir,
                               user_config.data.image_size)
    self.w_src, self.a_src = search_splits(splits["train"], user_config.data.train_portion)
    self.mesh = mesh = parallel.make_mesh(user_config.mesh.devices, user_config.mesh.fsdp)
    self.steps_per_epoch = loop.epoch_steps(
        min(len(self.w_src), len(self.a_src)), user_config.search.batch_size, devices=mesh.size,
        max_steps=user_config.max_steps_per_epoch, key="search.batch_size",
        split="a search split")
    self.ckpt = Checkpointer(
        os.path.join(os.path.abspath(workdir), "checkpoints"), keep=user_config.checkpoint.keep,
        keep_period=next((p for h in hooks if (p := h.keep_period(user_config,
                                                                  self.steps_per_epoch))),
                         None))
    loop.prepare_workdir(workdir, user_config, resume=resume,
                         has_checkpoint=bool(self.ckpt.steps()), what="search")
    # The supernet of the latest checkpoint (a hook's stage), then the config of the
    # checkpoint restored (a hook's settings, such as DARTS-ADA's decay after rollbacks).
    latest = self.ckpt.latest_meta() if resume else None
    config = _run_config(user_config, hooks, latest)
    net = space.supernet(config_lib.space_section(config), info, nnx.Rngs(config.seed))
    _, w_tx, a_tx = optimizers(config, self.steps_per_epoch)  # the state's structure
    net.eval()
    self.graphdef_eval = bilevel.split_supernet(net)[0]
    graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
    shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
    state = parallel.put_state(state, shardings[0])
    found, state, meta = loop.restore(self.ckpt, state, resume=resume, workdir=workdir,
                                      steps_per_epoch=self.steps_per_epoch,
                                      fresh=dict(loop.fresh_meta(), alphas={}))
    config = self.config = _run_config(user_config, hooks, meta if found else None)
    model = self.model = config_lib.space_section(config)
    s = config.search
    self.resumed, self.meta, self.state, self.info = bool(found), meta, state, info
    parts = self.parts = methods.build(config, self.steps_per_epoch)
    self.schedule, w_tx, a_tx = optimizers(config, self.steps_per_epoch, parts)
    self.dtype = dtype = utils.compute_dtype(config)
    self.augment = make_augment(info, crop_padding=config.data.crop_padding,
                                flip=config.data.flip)
    self.make = functools.partial(make_batches, batch_size=s.batch_size, augment=self.augment,
                                  workers=auto_workers(config.data.workers),
                                  process=parallel.process_slice(s.batch_size))
    self.run = methods.SearchRun(
        config=config, user_config=user_config, model=model, space=space, info=info,
        ckpt_dir=self.ckpt.directory, steps_per_epoch=self.steps_per_epoch, mesh=mesh,
        loss_fn=bilevel.make_loss_fn(graphdef, dtype), arch_batch=self._arch_batch,
        fresh_state=self._fresh_state, meta=meta)
    for h in hooks:
      h.check_restored(self.run, latest, found and found[2])
    self.latency = latency_setup(config, info, workdir)
    # What the steps compute: DARTS's hypergradient with the reference's virtual step (the
    # weight optimiser without its clipping), the latency objective, the relaxation.
    # Its virtual step is heavy-ball SGD even when the weights train with Nesterov momentum:
    # the references write Eq. 6 as w - lr (mu buf + g + wd w) (NAS-Bench-201's DARTS-V2 too).
    self.hypergrad = hypergrad.from_order(s.order, optim.make_w_tx(
        self.schedule, s.momentum, s.weight_decay, grad_clip=None, nesterov=False,
        weight_decay_in_state=s.ada), fd_r=s.fd_r, remat=s.hvp_remat)
    objective = self.latency and make_arch_objective(config, self.latency[1])
    # Each step is compiled on its first use (split steps share their programs). The loop
    # carries the state as a short list of buffers (`execution.Flat`).
    self.execution = execution.Execution(programs=s.programs, shardings=shardings, dtype=dtype)
    self.graphdef, self.w_tx, self.a_tx = graphdef, w_tx, a_tx
    self.reused = bool(previous is not None and previous.graphdef == graphdef
                       and _program_config(previous.config) == _program_config(config))
    if self.reused:  # traced and compiled once per process, with the hooks' programs
      self.flat, self.search_step, self.warmup_step = (previous.flat, previous.search_step,
                                                       previous.warmup_step)
      self.eval_step, self.hooks = previous.eval_step, previous.hooks
      return
    key = trace_key(config, info, self.steps_per_epoch, self.latency)
    self.flat, self.search_step, self.warmup_step = compiled_steps(
        graphdef, state, w_tx, a_tx, order=s.order, hypergrad=self.hypergrad,
        arch_loss=(bilevel.arch_loss(objective, *parts.terms) if objective or parts.terms
                   else None), parts=parts, execution=self.execution,
        weight_first=s.step_order == "weight_first", cache_key=key)
    self.eval_step = cpu.compile_then_trim(make_eval_step(
        self.graphdef_eval, shardings=((shardings[0].params, shardings[0].alphas,
                                        shardings[0].batch_stats), shardings[1]),
        dtype=dtype, cache_key=f"{key} evaluation"))

  def _arch_batch(self):
    return parallel.put_batch(next(iter(self.make(self.a_src, seed=0, epoch=0, train=False))),
                              self.mesh)

  def _fresh_state(self, config):
    net = self.space.supernet(config_lib.space_section(config), self.info,
                              nnx.Rngs(config.seed))
    _, w_tx, a_tx = optimizers(config, self.steps_per_epoch)  # the state's structure
    return bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))[1]

  def run_epochs(self, preemption, progress: bool):
    """Runs this run's epochs from where the checkpoint left off; -> (state, meta)."""
    config, s = self.config, self.config.search
    # This run's epochs start..end - 1 (a hook's stage, or all of them); the
    # architecture warm-up (PC-DARTS's weight-only epochs) counts from `start`.
    start, end = next((r for h in self.hooks if (r := h.epochs(config, self.meta))),
                      (0, s.epochs))

    def step(state, inputs, epoch, i):
      del i
      arch = self.parts.arch_steps and epoch - start >= s.arch_start_epoch
      fn = self.search_step if arch else self.warmup_step
      return fn(state, *(parallel.put_batch(b, self.mesh) for b in inputs))

    def pipeline(epoch, start_batch):
      run = dict(epoch=epoch, start=start_batch, epochs=s.epochs,
                 batches_per_epoch=self.steps_per_epoch)
      return zip(self.make(self.w_src, seed=config.seed, **run),
                 self.make(self.a_src, seed=config.seed + 1, **run))

    self.loop = loop.EpochLoop(
        name="search", workdir=self.workdir, ckpt=self.ckpt, meta=self.meta, epochs=end,
        steps_per_epoch=self.steps_per_epoch, every_steps=config.checkpoint.every_steps,
        preemption=preemption, metrics_file="metrics.jsonl", progress=progress,
        resumed=self.resumed, phases={"a_": "architecture", "w_": "weight"},
        postfix_keys=("w_loss", "w_acc", "a_loss", "a_acc"), to_tree=self.flat.tree)
    leaves = self.loop.run(self.flat.leaves(self.state), loop.Pipeline(pipeline), step,
                           self.end_epoch, self.written,
                           ahead={"the evaluation": self._epoch_end_ahead()})
    return self.flat.tree(leaves), dict(self.meta, elapsed=self.loop.elapsed())

  @functools.cached_property
  def _lr_at(self):
    """step (int32) -> the weights' learning rate, for the epochs' records."""
    return jax.jit(self.schedule)

  @functools.cached_property
  def _op_weights(self):
    """logits f32[E, K] -> the op weights the method mixes with, for the records."""
    return jax.jit(functools.partial(op_weights, relaxation=self.model.relaxation))

  def _epoch_end_ahead(self) -> list:
    """[(program, its arguments' specs)] that the epochs' ends call, for `EpochLoop.run`
    to compile ahead on CPU: the supernet's evaluation (not for SPOS's random paths nor
    the Gumbel methods, whose records take their architecture steps' figures) and the
    records' learning rate and op weights (else a dozen one-op programs, ~1 s). Not beside
    split steps (second order on CPU): their memory is the constraint, and their pieces
    trace one after another."""
    if (not hasattr(self.eval_step, "precompile")
        or self.execution.split(self.config.search.order)):
      return []
    alphas = parallel.to_host(self.state.alphas)
    logits = {(np.shape(l), np.asarray(l).dtype)
              for l, _ in self.space.alpha_groups(alphas, self.model).values()}
    calls = [(self._lr_at, (jax.ShapeDtypeStruct((), np.int32),))]
    calls += [(self._op_weights, (jax.ShapeDtypeStruct(*l),)) for l in sorted(logits, key=str)]
    if self.parts.arch_steps and not self.parts.reports_arch_steps:
      state = self.state
      variables = execution.specs((state.params, state.alphas, state.batch_stats))
      batch = eval_batch_spec(self.a_src, batch_size=self.config.search.batch_size,
                              augment=self.augment,
                              sharding=parallel.batch_sharding(self.mesh))
      calls.insert(0, (self.eval_step, (variables, batch, {})))
    return calls

  def evaluate(self, state, inputs=None) -> tuple[float, float]:
    """(loss, accuracy) of the supernet of `state` on the architecture split."""
    return evaluate(lambda b: parallel.to_host(self.eval_step(
        (state.params, state.alphas, state.batch_stats), parallel.put_batch(b, self.mesh),
        inputs or {})), self.make(self.a_src, seed=0, epoch=0, train=False))

  @functools.cached_property
  def within_limit(self) -> list:
    """The space's architectures within `latency.limit_ms` (on first use)."""
    return selection.candidates(self.space, self.model, self.config.latency.limit_ms,
                                self.latency[1])

  def derive(self, alphas):
    # With latency.limit_ms, each epoch's architecture is the most probable one within
    # the limit, as `selection.argmax` derives the final one.
    if self.config.latency.limit_ms <= 0:
      return self.space.derive(alphas, self.model)
    return selection.most_probable(self.space, alphas, self.model, self.within_limit)

  def end_epoch(self, leaves, epoch: int, means: dict) -> dict:
    """The epoch's record: validation, the derived architecture, what the hooks add."""
    state, config, space, model = self.flat.tree(leaves), self.config, self.space, self.model
    lr = float(self._lr_at(np.int32(epoch * self.steps_per_epoch)))
    if not self.parts.arch_steps:
      # SPOS: one uniformly drawn path of the supernet (a new one each epoch); its
      # untrained alphas derive nothing, and the selection chooses after the search.
      valid_loss, valid_acc = self.evaluate(state, self.parts.relaxation.model_inputs(
          jax.random.fold_in(jax.random.key(config.seed), epoch), state.step))
      tqdm.tqdm.write(f"epoch {epoch}: w_acc {means['w_acc']:.3f} valid_acc {valid_acc:.3f} "
                      f"(a random path)")
      return dict(means, epoch=epoch, lr=lr, valid_loss=valid_loss, valid_acc=valid_acc)
    if self.parts.reports_arch_steps and "a_acc" in means:
      valid_loss, valid_acc = means["a_loss"], means["a_acc"]
    else:
      valid_loss, valid_acc = self.evaluate(state)
    alphas = parallel.to_host(state.alphas)
    arch = self.derive(alphas)
    record = dict(means, epoch=epoch, lr=lr, valid_loss=valid_loss, valid_acc=valid_acc)
    for group, (logits, ops) in space.alpha_groups(alphas, model).items():
      record[f"alpha_entropy_{group}"] = alpha_entropy(logits)
      # The weights the method mixes with (sigmoid for FairDARTS, the Dirichlet mean
      # for DrNAS), not always softmax; the entropy above stays softmax's.
      weights = np.asarray(self._op_weights(np.asarray(logits)))
      self.meta["alphas"].setdefault(group, []).append(weights.tolist())
      self.loop.summaries.op_weights(self.loop.done, group, weights, ops)
    record["genotype"] = space.to_dict(arch)
    for h in self.hooks:
      h.end_epoch(self.run, state, epoch, record)
    facts = (space.arch_metrics(arch, model, alphas) if hasattr(space, "arch_metrics")
             else {})
    record.update(facts)
    shown = "".join(f" {k} {v:.2f}" for k, v in facts.items() if isinstance(v, float))
    if "hessian_max_eig" in record:
      shown += f" hessian_max_eig {record['hessian_max_eig']:.4g}"
    if self.latency:  # the derived network's latency on the table's device
      record["predicted_latency_ms"] = self.latency[1].predict(arch)
      self.loop.postfix["lat_ms"] = f"{record['predicted_latency_ms']:.3f}"
      shown = f" predicted latency {record['predicted_latency_ms']:.3f} ms" + shown
    tqdm.tqdm.write(f"epoch {epoch}: w_acc {record['w_acc']:.3f} valid_acc {valid_acc:.3f}"
                    f"{shown} architecture {arch}")
    return record

  def written(self, record: dict) -> None:
    if "genotype" in record:  # not for SPOS, whose selection writes it at the end
      spaces.save(self.space, self.space.from_dict(record["genotype"]),
                  os.path.join(self.workdir, "genotype.json"))

  @functools.cached_property
  def _tune_step(self):
    _, weight_step = bilevel.make_phase_steps(
        self.graphdef, self.w_tx, self.a_tx, hypergrad=self.hypergrad,
        relaxation=self.parts.relaxation, dtype=self.dtype)
    return jax.jit(kernels.for_local_devices(weight_step), donate_argnums=0)

  def train(self, state, weight_batches, inputs=None):
    """`selection.Context.train`: weight steps over `weight_batches` (donates `state`)."""
    if inputs is not None:  # weight steps with given supernet inputs (DARTS-PT)
      for b in weight_batches:
        state, _ = self._tune_step(state, parallel.put_batch(b, self.mesh), inputs)
      return state
    leaves = self.flat.leaves(state)
    for b in weight_batches:  # the warm-up step is the weight step (no batch_val read)
      b = parallel.put_batch(b, self.mesh)
      leaves, _ = self.warmup_step(leaves, b, b)
    return self.flat.tree(leaves)

  def score(self, state, weights) -> np.ndarray:
    """`selection.Context.score`: on the whole validation split on every host (not its
    process slice), with the state gathered from all hosts, so that every host scores
    and selects alike; BatchNorm on each candidate's batch statistics."""
    batches = list(make_batches(self.a_src, batch_size=self.config.search.batch_size,
                                seed=0, epoch=0, augment=self.augment, train=False))
    net = nnx.merge(self.graphdef_eval, *parallel.gather((state.params, state.alphas,
                                                          state.batch_stats)))
    net.train()  # batch statistics, each candidate its own (SPOS's recalibration)
    return selection.one_hot_accuracies(net, weights, batches)

  def select_and_write(self, state, meta: dict):
    """The selection rule's architecture (a hook's, if one gives it: DARTS-ES's), written
    with the selection's cost, the op-weight history and the cells' drawings."""
    config, space, s = self.config, self.space, self.config.search
    # The selection may train the state on, which donates it: the alphas to plot first.
    final_alphas = parallel.to_host(state.alphas)
    started = time.perf_counter()
    chosen = next((a for h in self.hooks if (a := h.final_arch(self.run, meta)) is not None),
                  None)
    if chosen is not None:
      arch = space.from_dict(chosen)
    else:
      arch = selection.SELECTIONS[s.selection](selection.Context(
          space=space, config=config, model=self.model, state=state, evaluate=self.evaluate,
          train=self.train,
          # A fine-tuning epoch is a search epoch's steps (max_steps_per_epoch caps both).
          weight_batches=lambda epoch=0: itertools.islice(
              self.make(self.w_src, seed=config.seed, epoch=s.epochs + epoch),
              self.steps_per_epoch),
          score=self.score, latency=self.latency and self.latency[1]))
    if self.loop.primary:
      # What the selection cost (DARTS-PT's fine-tuning, the supernet's scoring), beside
      # the epochs' wall time in metrics.jsonl; a resumed finished run selects again.
      loop.write_atomic(os.path.join(self.workdir, "selection.json"), json.dumps(dict(
          selection=s.selection, seconds=time.perf_counter() - started,
          **space.to_dict(arch))))
      spaces.save(space, arch, os.path.join(self.workdir, "genotype.json"))
      groups = space.alpha_groups(final_alphas, self.model)
      if meta["alphas"]:  # none for SPOS, which trains no architecture weights
        history = {g: [np.asarray(a) for a in meta["alphas"][g]] for g in groups}
        np.savez(os.path.join(self.workdir, "alphas.npz"),
                 **{g: np.stack(h) for g, h in history.items()})
        plotting.plot_alphas(history, {g: ops for g, (_, ops) in groups.items()},
                             os.path.join(self.workdir, "alphas.png"))
      space.draw(arch, os.path.join(self.workdir, "genotype"))
    return arch
