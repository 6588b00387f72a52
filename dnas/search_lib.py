"""The search behind `python -m dnas.search`: data -> the space's supernet -> bilevel
steps -> the derived architecture, metrics.jsonl and alphas.png in the work directory.
Nothing here knows the space: it goes through the search-space protocol
(`dnas.spaces.base`)."""

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

from dnas import (bilevel, config as config_lib, cpu, hessian, hypergrad, latency as latency_lib,
                  loop, methods, parallel, plotting, selection, spaces, utils)
from dnas.arch import op_weights
from dnas.checkpoint import Checkpointer
from dnas.data.pipeline import (auto_workers, get_dataset, make_augment, make_batches,
                                search_splits)
from dnas.utils import evaluate


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def alpha_entropy(alphas: np.ndarray) -> float:
  """Mean over rows of the entropy (nats) of softmax(alpha), f32[E, K] -> float."""
  p = _softmax(alphas)
  return float(np.mean(-np.sum(p * np.log(p + 1e-12), -1)))


def make_supernet(config, num_classes: int, in_channels: int) -> nnx.Module:
  """The supernet of `config.space` for images of `in_channels` and `num_classes`."""
  from dnas.data.pipeline import DatasetInfo  # pylint: disable=g-import-not-at-top
  info = DatasetInfo("", (1, 1, in_channels), num_classes, (), ())
  return spaces.get(config.space).supernet(config, info, nnx.Rngs(config.seed))


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
    table = space.latency_profile(config, info, batch_size=L.batch_size, dtype=config.dtype,
                                  repeats=L.repeats)
    if path and jax.process_index() == 0:
      table.save(path)
  model = space.latency_model(table, config, info)
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


def _fresh_meta() -> dict:
  return dict(epoch=0, batch=0, sums={}, records=[], alphas={}, elapsed=0.0)


def _optimizers(config, steps_per_epoch: int, parts: methods.Parts | None = None,
                weight_decay: float | None = None):
  """(weight lr schedule, weight optimiser, architecture optimiser) of the search;
  `weight_decay` replaces `search.weight_decay` (DARTS-ADA's increased one)."""
  s = config.search
  wd = s.weight_decay if weight_decay is None else weight_decay
  schedule = bilevel.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, steps_per_epoch)
  w_tx = bilevel.make_w_tx(schedule, s.momentum, wd, s.grad_clip, s.nesterov)
  a_wd = s.a_weight_decay if parts is None or parts.a_weight_decay is None else (
      parts.a_weight_decay)
  return schedule, w_tx, bilevel.make_a_tx(s.a_lr, s.a_b1, s.a_b2, a_wd)


def compiled_steps(graphdef, state, w_tx, a_tx, *, order: str, hypergrad, arch_loss,
                   parts: methods.Parts, execution: bilevel.Execution,
                   weight_first: bool = False):
  """(flat, search_step, warmup_step) as the search loop calls them, on the `loop.Flat`
  leaves of `state` (laid out by `execution.shardings`): each compiled on its first call.

  One program (the default off the CPU): a pure step that `flat.jit` compiles, the state
  stacked off the CPU. Split (`execution.split(order)`): a few programs jitted inside
  (`bilevel.split_piece`), the state as a tree at each call. (A split step built with
  jit=False ran eagerly, op by op: sessions 8-9, 23 s per NAS-Bench-201 digits step;
  tests/test_search_lib.py checks that no step traces again once compiled.)
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
  return (flat, *(cpu.compile_then_trim(flat.jit(f, **bilevel.jit_shardings(
      execution.shardings, 2))) for f in steps))


def _ada_rollback(directory: str, state, record: dict, steps_per_epoch: int, config) -> None:
  """Makes the checkpoint of epoch `record["ada_rollback"]` the latest, its meta noting
  the rollback and the new weight decay, so that a resumed search goes on from there.
  A kill in between leaves an earlier checkpoint the latest: the resumed run repeats the
  epochs to the rollback exactly and decides it again."""
  ckpt = Checkpointer(directory, keep=config.checkpoint.keep,
                      keep_period=config.search.hessian_every * steps_per_epoch)
  back = (record["ada_rollback"] + 1) * steps_per_epoch  # its epoch-end checkpoint
  kept, meta = ckpt.restore(back, state)
  meta = dict(meta, ada=meta.get("ada", []) + [dict(
      epoch=record["epoch"], rollback=record["ada_rollback"],
      weight_decay=record["ada_weight_decay"])])
  ckpt.delete_from(back)
  ckpt.save(back, kept, meta)
  ckpt.close()


def _stage_config(config, meta: dict | None):
  """`config` as DrNAS's progressive stage of a run whose checkpoint meta is `meta` (None:
  a fresh run) sees it: that stage's partial channels and op mask; `config` itself
  without stages."""
  d = config.get("drnas")
  if d is None or not d.stage_epochs or not meta or "drnas_stage" not in meta:
    return config
  stage = meta["drnas_stage"]
  c = config.copy_and_resolve_references()
  c.model.pc_k = int(d.stage_k[stage["stage"]])
  c.model.op_mask = stage["op_mask"]
  return c


def _stage(config, meta: dict | None) -> int:
  return meta["drnas_stage"]["stage"] if meta and "drnas_stage" in meta else 0


def _drnas_next_stage(directory: str, state, meta: dict, config, info,
                      steps_per_epoch: int) -> None:
  """DrNAS's step between two stages (the official train_search.py): each edge pruned to
  its `stage_keep` strongest ops, the partial channels widened to 1/`stage_k`
  (`drnas.widen`: weights, BatchNorm statistics and momentum), the architecture
  optimiser and the learning-rate schedule going on. The stage's last checkpoint is
  replaced by the widened state, its meta naming the new stage and mask; a kill in
  between leaves an earlier checkpoint the latest, and the resumed run redoes the
  stage's end the same way."""
  from dnas.methods import drnas  # pylint: disable=g-import-not-at-top
  d, stage = config.drnas, _stage(config, meta) + 1
  host = parallel.gather(state)
  old_mask = config.model.op_mask or {}
  pruned, mask = {}, {}
  for kind in ("normal", "reduce"):
    logits = np.asarray(host.alphas[f"alphas_{kind}"].get_value())
    old = old_mask.get(kind)
    pruned[kind], mask[kind] = drnas.prune(logits, int(d.stage_keep[stage]),
                                           None if old is None else np.asarray(old, bool))
  meta = dict(meta, drnas_stage=dict(stage=stage, op_mask={k: v.tolist()
                                                           for k, v in mask.items()}))
  c = _stage_config(config, meta)
  net = spaces.get(c.space).supernet(c, info, nnx.Rngs(config.seed))
  _, w_tx, a_tx = _optimizers(c, steps_per_epoch)  # the state's structure
  _, fresh = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  seed = config.seed * 1000 + stage
  alphas = jax.tree_util.tree_map_with_path(
      lambda p, x: next((pruned[k] for k in pruned if f"alphas_{k}" in jax.tree_util.keystr(p)),
                        x), host.alphas)
  widened = host._replace(
      params=drnas.widen(host.params, fresh.params, seed),
      batch_stats=drnas.widen(host.batch_stats, fresh.batch_stats, seed, host.params),
      w_opt_state=drnas.widen(host.w_opt_state, fresh.w_opt_state, seed), alphas=alphas)
  step = int(host.step)
  widened = parallel.put_state(widened, parallel.state_shardings(
      fresh, parallel.make_mesh(config.mesh.devices, config.mesh.fsdp)))
  ckpt = Checkpointer(directory, keep=config.checkpoint.keep)
  ckpt.delete_from(step)
  ckpt.save(step, widened, meta)
  ckpt.close()
  tqdm.tqdm.write(f"DrNAS: stage {stage}: {d.stage_keep[stage]} ops left per edge, partial "
                  f"channels 1/{d.stage_k[stage]}")


def load_supernet(config, workdir: str) -> nnx.Module:
  """The supernet of the search in `workdir` as its last checkpoint left it (weights,
  architecture parameters, BatchNorm state), in eval mode."""
  space = spaces.get(config.space)
  info, _ = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      keep=config.checkpoint.keep)
  config = _stage_config(config, ckpt.latest_meta())
  net = space.supernet(config, info, nnx.Rngs(config.seed))
  _, w_tx, a_tx = _optimizers(config, 1)  # the state's structure, not its schedule
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  found = ckpt.restore_latest(state)
  if found is None:
    raise FileNotFoundError(f"no search checkpoint in {workdir}")
  _, state, _ = found
  net = nnx.merge(graphdef, state.params, state.alphas, state.batch_stats)
  net.eval()
  return net


def _score(graphdef_eval, batches, state, weights) -> np.ndarray:
  """`selection.Context.score`: on `batches()`, the whole validation split on every host
  (not its process slice), with the state gathered from all hosts, so that every host
  scores and selects alike; BatchNorm on each candidate's batch statistics."""
  net = nnx.merge(graphdef_eval, *parallel.gather((state.params, state.alphas,
                                                    state.batch_stats)))
  net.train()  # batch statistics, each candidate its own (SPOS's recalibration)
  return selection.one_hot_accuracies(net, weights, batches())


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
    return _search(config, workdir, progress, resume, preemption)


def _search(config, workdir, progress, resume, preemption):
  config_lib.validate(config, "search")
  space = spaces.get(config.space)
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  w_src, a_src = search_splits(splits["train"], config.data.train_portion)
  s = config.search
  mesh = parallel.make_mesh(config.mesh.devices, config.mesh.fsdp)
  if s.batch_size % mesh.size:
    raise config_lib.ConfigError(f"search.batch_size {s.batch_size} must be divisible by the "
                                 f"{mesh.size} devices of the mesh")
  process = parallel.process_slice(s.batch_size)
  steps_per_epoch = min(len(w_src), len(a_src)) // s.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(f"search.batch_size {s.batch_size} is larger than a search "
                                 f"split ({min(len(w_src), len(a_src))} examples)")
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  # DARTS-ADA goes back to an epoch whose eigenvalue was measured: those checkpoints stay.
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      keep=config.checkpoint.keep,
                      keep_period=s.hessian_every * steps_per_epoch if s.ada else None)
  loop.prepare_workdir(workdir, config, resume=resume, has_checkpoint=bool(ckpt.steps()),
                       what="search")
  # DrNAS's progressive stages: the latest checkpoint says which stage (its supernet).
  user_config = config
  latest_meta = ckpt.latest_meta() if resume else None
  config = _stage_config(config, latest_meta)
  stages = tuple(config.drnas.stage_epochs) if "drnas" in config else ()

  net = space.supernet(config, info, nnx.Rngs(config.seed))
  parts = methods.build(config, steps_per_epoch)  # relaxation, loss terms, perturbation
  schedule, w_tx, a_tx = _optimizers(config, steps_per_epoch, parts)
  net.eval()
  graphdef_eval = bilevel.split_supernet(net)[0]
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  found = ckpt.restore_latest(state) if resume else None
  meta = _fresh_meta()
  newest = _stage(config, latest_meta)
  if stages and newest and (found is None or _stage(config, found[2]) != newest):
    # The stage's supernet came from the newest meta; an older checkpoint of another stage
    # does not fit it (and starting afresh with it would be wrong).
    raise config_lib.ConfigError(
        f"{ckpt.directory}: the newest checkpoint (DrNAS stage {newest}) is unreadable and "
        f"the ones before are of another stage; delete the unreadable ones to go on from "
        f"an earlier one")
  if found:
    _, state, meta = found
    print(f"dnas: resuming {workdir} at epoch {meta['epoch']}, step {int(state.step)}",
          file=sys.stderr)
  # DARTS-ADA's decay after its rollbacks so far (the checkpoint's meta says how many).
  weight_decay = meta["ada"][-1]["weight_decay"] if meta.get("ada") else s.weight_decay
  if weight_decay != s.weight_decay:  # same optimiser state structure, larger decay
    schedule, w_tx, a_tx = _optimizers(config, steps_per_epoch, parts, weight_decay)
  dtype = utils.compute_dtype(config)
  latency = latency_setup(config, info, workdir)
  # What the steps compute: DARTS's hypergradient with the reference's virtual step (the
  # weight optimiser without its clipping), the latency objective, the relaxation.
  # Its virtual step is heavy-ball SGD even when the weights train with Nesterov momentum:
  # the references write Eq. 6 as w - lr (mu buf + g + wd w) (NAS-Bench-201's DARTS-V2 too).
  hg = hypergrad.from_order(s.order, bilevel.make_w_tx(schedule, s.momentum, weight_decay,
                                                       grad_clip=None, nesterov=False),
                            fd_r=s.fd_r, remat=s.hvp_remat)
  objective = latency and make_arch_objective(config, latency[1])
  # Epochs before `arch_start_epoch` train the weights only (PC-DARTS's warm-up); each
  # step is compiled on its first use (split steps share their programs). The loop
  # carries the state as a short list of buffers (`loop.Flat`).
  execution = bilevel.Execution(programs=s.programs, shardings=shardings, dtype=dtype)
  flat, search_step, warmup_step = compiled_steps(
      graphdef, state, w_tx, a_tx, order=s.order, hypergrad=hg,
      arch_loss=(bilevel.arch_loss(objective, *parts.terms) if objective or parts.terms
                 else None), parts=parts, execution=execution,
      weight_first=s.step_order == "weight_first")
  eval_step = cpu.compile_then_trim(bilevel.make_eval_step(
      graphdef_eval, shardings=shardings, dtype=dtype))
  augment = make_augment(info, crop_padding=config.data.crop_padding, flip=config.data.flip)
  make = functools.partial(make_batches, batch_size=s.batch_size, augment=augment,
                           workers=auto_workers(config.data.workers), process=process)
  pipelines = []

  def batches(epoch, start):
    # One pipeline per split for the rest of the run, so Grain's worker pools live across
    # epochs; the loop asks at each epoch's start and takes steps_per_epoch batches.
    if not pipelines:
      run = dict(epoch=epoch, start=start, epochs=s.epochs, batches_per_epoch=steps_per_epoch)
      pipelines.append(zip(make(w_src, seed=config.seed, **run),
                           make(a_src, seed=config.seed + 1, **run)))
    return pipelines[0]

  # This run covers one DrNAS stage (all epochs without stages): epochs start..end - 1,
  # the architecture warm-up counted from its start.
  stage = _stage(config, meta)
  start = int(sum(stages[:stage]))
  end = int(sum(stages[:stage + 1])) if stages else s.epochs

  def step(state, inputs, epoch, i):
    del i
    arch = parts.arch_steps and epoch - start >= s.arch_start_epoch
    fn = search_step if arch else warmup_step
    return fn(state, *(parallel.put_batch(b, mesh) for b in inputs))
  run = loop.EpochLoop(name="search", workdir=workdir, ckpt=ckpt, meta=meta, epochs=end,
                       steps_per_epoch=steps_per_epoch, every_steps=config.checkpoint.every_steps,
                       preemption=preemption, metrics_file="metrics.jsonl", progress=progress,
                       resumed=bool(found), phases={"a_": "architecture", "w_": "weight"},
                       postfix_keys=("w_loss", "w_acc", "a_loss", "a_acc"), to_tree=flat.tree)

  def evaluate_state(state, inputs=None):
    return evaluate(lambda b: parallel.to_host(eval_step(
        state.params, state.alphas, state.batch_stats, parallel.put_batch(b, mesh),
        inputs or {})), make(a_src, seed=0, epoch=0, train=False))

  # RobustDARTS's signal: the Hessian's largest eigenvalue in alpha of the loss on one
  # fixed batch of the architecture split (the same batch every time: a trajectory).
  eigenvalue = s.hessian_every and hessian.make_eigenvalue_fn(
      bilevel.make_loss_fn(graphdef, dtype), s.hessian_iters)
  eigen_batch = []

  def hessian_facts(state, epoch, record):
    if not eigenvalue or (epoch + 1) % s.hessian_every:
      return
    if not eigen_batch:
      eigen_batch.append(parallel.put_batch(next(iter(make(a_src, seed=0, epoch=0,
                                                             train=False))), mesh))
    record["hessian_max_eig"] = float(eigenvalue(state, eigen_batch[0],
                                                 jax.random.key(epoch)))
    if not (s.early_stop or s.ada):
      return
    rd = config.robust_darts  # DARTS-ES's rule: the epoch before the eigenvalue took off
    past = [r for r in meta["records"] if "hessian_max_eig" in r] + [record]
    stop = hessian.early_stop_epoch([r["epoch"] for r in past],
                                    [r["hessian_max_eig"] for r in past], window=rd.window,
                                    delta=rd.delta, factor=rd.factor,
                                    min_epoch=rd.es_start_epoch)
    if stop is None:
      return
    if s.early_stop:
      record.update(early_stop_epoch=stop, stop=True)
      tqdm.tqdm.write(f"DARTS-ES: the Hessian's eigenvalue grew by more than {rd.factor}x; "
                      f"stopping, with the architecture of epoch {stop}")
      return
    new = hessian.ada_weight_decay(weight_decay, mul_factor=rd.mul_factor,
                                   max_weight_decay=rd.max_weight_decay)
    if new is not None:  # DARTS-ADA: back to `stop`, on with more decay
      record.update(ada_rollback=stop, ada_weight_decay=new, stop=True)
      tqdm.tqdm.write(f"DARTS-ADA: the Hessian's eigenvalue grew by more than {rd.factor}x; "
                      f"going back to epoch {stop} with weight decay {new:.4g} "
                      f"(was {weight_decay:.4g})")

  within_limit = []

  def derive(alphas):
    # With latency.limit_ms, each epoch's architecture is the most probable one within
    # the limit, as `selection.argmax` derives the final one.
    if config.latency.limit_ms <= 0:
      return space.derive(alphas, config)
    if not within_limit:
      within_limit.append(selection.candidates(space, config, latency[1]))
    return selection.most_probable(space, alphas, config, within_limit[0])

  def end_epoch(leaves, epoch, means):
    state = flat.tree(leaves)
    if (config.search.relaxation == "gumbel" and config.search.order == "first"
        and "a_acc" in means):
      # GDAS reports the architecture steps' sampled networks on the validation split
      # (its search_func's arch_top1); the softmax mixture, which it never trains, is
      # evaluated only in epochs without architecture steps (and for the second order,
      # whose architecture steps see virtual weights).
      valid_loss, valid_acc = means["a_loss"], means["a_acc"]
    elif not parts.arch_steps:
      # SPOS: one uniformly drawn path of the supernet (a new one each epoch); its
      # untrained alphas derive nothing, and the selection chooses after the search.
      valid_loss, valid_acc = evaluate_state(state, parts.relaxation.model_inputs(
          jax.random.fold_in(jax.random.key(config.seed), epoch), state.step))
      record = dict(means, epoch=epoch, lr=float(schedule(epoch * steps_per_epoch)),
                    valid_loss=valid_loss, valid_acc=valid_acc)
      tqdm.tqdm.write(f"epoch {epoch}: w_acc {record['w_acc']:.3f} valid_acc {valid_acc:.3f} "
                      f"(a random path)")
      return record
    else:
      valid_loss, valid_acc = evaluate_state(state)
    alphas = parallel.to_host(state.alphas)
    arch = derive(alphas)
    record = dict(means, epoch=epoch, lr=float(schedule(epoch * steps_per_epoch)),
                  valid_loss=valid_loss, valid_acc=valid_acc)
    if s.ada:
      record["weight_decay"] = weight_decay
    for group, (logits, ops) in space.alpha_groups(alphas, config).items():
      record[f"alpha_entropy_{group}"] = alpha_entropy(logits)
      # The weights the method mixes with (sigmoid for FairDARTS, the Dirichlet mean
      # for DrNAS), not always softmax; the entropy above stays softmax's.
      weights = np.asarray(op_weights(np.asarray(logits), methods.relaxation_kind(config)))
      meta["alphas"].setdefault(group, []).append(weights.tolist())
      run.summaries.op_weights(run.done, group, weights, ops)
    record["genotype"] = space.to_dict(arch)
    hessian_facts(state, epoch, record)
    facts = (space.arch_metrics(arch, config, alphas) if hasattr(space, "arch_metrics")
             else {})
    record.update(facts)
    if latency:  # the derived network's latency on the table's device
      record["predicted_latency_ms"] = latency[1].predict(arch)
      run.postfix["lat_ms"] = f"{record['predicted_latency_ms']:.3f}"
    lat = (f" predicted latency {record['predicted_latency_ms']:.3f} ms" if latency else "")
    shown = "".join(f" {k} {v:.2f}" for k, v in facts.items() if isinstance(v, float))
    if "hessian_max_eig" in record:
      shown += f" hessian_max_eig {record['hessian_max_eig']:.4g}"
    tqdm.tqdm.write(f"epoch {epoch}: w_acc {record['w_acc']:.3f} valid_acc {valid_acc:.3f}"
                    f"{lat}{shown} architecture {arch}")
    return record

  def written(record):
    if "genotype" in record:  # not for SPOS, whose selection writes it at the end
      spaces.save(space, space.from_dict(record["genotype"]),
                  os.path.join(workdir, "genotype.json"))

  state = flat.tree(run.run(flat.leaves(state), batches, step, end_epoch, written))
  last = meta["records"][-1] if meta["records"] else {}
  if "ada_rollback" in last:  # DARTS-ADA: the run goes on from the earlier epoch
    _ada_rollback(ckpt.directory, state, last, steps_per_epoch, config)
    return _search(config, workdir, progress, True, preemption)
  if end < s.epochs and meta["epoch"] == end and not meta.get("stopped"):
    _drnas_next_stage(ckpt.directory, state, dict(meta, elapsed=run.elapsed()), config, info,
                      steps_per_epoch)
    return _search(user_config, workdir, progress, True, preemption)

  tune_steps = []

  def train(state, weight_batches, inputs=None):
    if inputs is not None:  # weight steps with given supernet inputs (DARTS-PT)
      if not tune_steps:
        _, weight_step = bilevel.make_phase_steps(graphdef, w_tx, a_tx, hypergrad=hg,
                                                  relaxation=parts.relaxation, dtype=dtype)
        tune_steps.append(jax.jit(weight_step, donate_argnums=0))
      for b in weight_batches:
        state, _ = tune_steps[0](state, parallel.put_batch(b, mesh), inputs)
      return state
    leaves = flat.leaves(state)
    for b in weight_batches:  # the warm-up step is the weight step (no batch_val read)
      b = parallel.put_batch(b, mesh)
      leaves, _ = warmup_step(leaves, b, b)
    return flat.tree(leaves)

  # After the search: the selection rule (argmax of alpha: the last epoch's architecture).
  # It may train the state on, which donates it: the alphas to plot are read first.
  final_alphas = parallel.to_host(state.alphas)
  started = time.perf_counter()
  stopped_at = meta["records"][-1].get("early_stop_epoch") if meta["records"] else None
  if stopped_at is not None:  # DARTS-ES: the architecture of the epoch it went back to
    arch = space.from_dict(meta["records"][stopped_at]["genotype"])
  else:
    arch = selection.SELECTIONS[s.selection](selection.Context(
        space=space, config=config, state=state, evaluate=evaluate_state, train=train,
        # A fine-tuning epoch is a search epoch's steps (max_steps_per_epoch caps both).
        weight_batches=lambda epoch=0: itertools.islice(
            make(w_src, seed=config.seed, epoch=s.epochs + epoch), steps_per_epoch),
        score=functools.partial(_score, graphdef_eval, lambda: list(make_batches(
            a_src, batch_size=s.batch_size, seed=0, epoch=0, augment=augment,
            train=False))),
        latency=latency and latency[1]))
  if run.primary:
    # What the selection cost (DARTS-PT's fine-tuning, the supernet's scoring), beside
    # the epochs' wall time in metrics.jsonl; a resumed finished run selects again.
    loop.write_atomic(os.path.join(workdir, "selection.json"), json.dumps(dict(
        selection=s.selection, seconds=time.perf_counter() - started,
        **space.to_dict(arch))))
    spaces.save(space, arch, os.path.join(workdir, "genotype.json"))
    groups = space.alpha_groups(final_alphas, config)
    if meta["alphas"]:  # none for SPOS, which trains no architecture weights
      history = {g: [np.asarray(a) for a in meta["alphas"][g]] for g in groups}
      np.savez(os.path.join(workdir, "alphas.npz"),
               **{g: np.stack(h) for g, h in history.items()})
      plotting.plot_alphas(history, {g: ops for g, (_, ops) in groups.items()},
                           os.path.join(workdir, "alphas.png"))
    space.draw(arch, os.path.join(workdir, "genotype"))
  return arch
