"""The search loop behind `python -m dnas.search`: data -> supernet -> bilevel steps ->
genotype, metrics.jsonl and alphas.png in the work directory."""

import functools
import os
import sys
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from dnas import bilevel, config as config_lib, latency_lib, loop, parallel, plotting, utils
from dnas.arch import ArchParam
from dnas.checkpoint import Checkpointer
from dnas.data.pipeline import get_dataset, make_augment, make_batches, search_splits
from dnas.spaces import darts
from dnas.spaces.darts import latency as darts_latency
from dnas.summaries import Summaries
from dnas.utils import evaluate


def alpha_entropy(alphas: np.ndarray) -> float:
  """Mean over edges of the entropy (nats) of softmax(alpha), f32[E, K] -> float."""
  p = np.exp(alphas - alphas.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return float(np.mean(-np.sum(p * np.log(p + 1e-12), -1)))


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def make_supernet(config, num_classes: int, in_channels: int) -> darts.Network:
  """The supernet of `config.method`: DARTS, or PC-DARTS (partial channels with
  K = `model.pc_k`, edge normalisation)."""
  m, s = config.model, config.search
  pc = config.get("method", "darts") == "pc_darts"
  return darts.Network(m.C, num_classes, m.layers, m.steps, m.multiplier, m.stem_multiplier,
                       in_channels=in_channels, primitives=tuple(m.primitives),
                       partial_channels=m.get("pc_k", 4) if pc else 1, edge_normalization=pc,
                       relaxation=s.get("relaxation", "softmax"),
                       gumbel_hard=s.get("gumbel_hard", False), remat=m.remat,
                       rngs=nnx.Rngs(config.seed))


def genotype_of(alphas, m) -> darts.Genotype:
  """The genotype of host `alphas` (an ArchParam state of the supernet) under model config
  `m`; PC-DARTS's edge logits take part when present."""
  get = lambda k: np.asarray(alphas[k].get_value()) if k in alphas else None
  return darts.derive_genotype(get("alphas_normal"), get("alphas_reduce"), steps=m.steps,
                               multiplier=m.multiplier, primitives=tuple(m.primitives),
                               betas_normal=get("betas_normal"), betas_reduce=get("betas_reduce"))


def latency_setup(config, info, workdir: str | None = None):
  """(table, layout, ExpectedLatency) for `config.latency`, or None when it names neither
  an objective nor a table. Without a table one is measured here (`latency.batch_size`,
  the config's dtype) and written to `workdir/latency_table.json`, which a resumed run
  reads back."""
  L = config.get("latency")
  if L is None or (L.objective == "none" and not L.table):
    return None
  layout = darts_latency.layout_for(config, info)
  primitives = tuple(config.model.primitives)
  dtype = config.get("dtype", "float32")
  path = L.table or (os.path.join(workdir, "latency_table.json") if workdir else "")
  if path and os.path.exists(path):
    table = latency_lib.LatencyTable.load(path)
    table.check(batch_size=L.batch_size, dtype=dtype, allow_foreign=L.allow_foreign_table)
  elif L.table:
    raise latency_lib.LatencyError(f"cannot read latency table {L.table}: no such file")
  elif jax.process_count() > 1:
    # Each host would time its own table, and their objectives would differ.
    raise latency_lib.LatencyError("a multi-host search needs latency.table: measure one "
                                   "with python -m dnas.latency profile and pass it")
  else:
    print(f"dnas: measuring a latency table for the final network on "
          f"{jax.devices()[0].device_kind} (batch {L.batch_size}, {dtype})", file=sys.stderr)
    table = darts_latency.profile(layout, primitives, batch_size=L.batch_size, dtype=dtype,
                                  repeats=L.repeats)
    if path and jax.process_index() == 0:
      table.save(path)
  expected = darts_latency.ExpectedLatency.build(table, layout, primitives)
  latency_lib.validate_settings(L.objective, L.weight, L.fbnet_alpha, L.fbnet_beta,
                                L.target_ms, min_latency_ms=expected.minimum())
  return table, layout, expected


def make_arch_objective(config, expected):
  """The architecture step's objective(ce, alphas) -> (loss, metrics) of
  `config.latency`, or None."""
  L = config.latency
  objective = latency_lib.make_objective(L.objective, weight=L.weight,
                                         fbnet_alpha=L.fbnet_alpha, fbnet_beta=L.fbnet_beta,
                                         target_ms=L.target_ms)
  return objective and latency_lib.arch_objective(objective, expected.of_state)


def _fresh_meta() -> dict:
  return dict(epoch=0, batch=0, sums={}, records=[], alphas_normal=[], alphas_reduce=[],
              elapsed=0.0)


def run_search(config, workdir: str, progress: bool = True, resume: bool = True) -> darts.Genotype:
  """Runs a DARTS search as configured and writes its results into `workdir`.

  Checkpoints (everything a step reads, the data position and the metric history) go to
  `workdir/checkpoints` every `config.checkpoint.every_steps` steps and at each epoch
  end; with `resume`, a run found there is continued exactly where it stopped. SIGTERM
  saves a checkpoint and raises `loop.Preempted`.

  Returns the final genotype.
  """
  # SIGTERM from the start: one arriving while data load or compilation runs is answered
  # after the first step, with a checkpoint.
  with loop.Preemption() as preemption:
    return _search(config, workdir, progress, resume, preemption)


def _search(config, workdir, progress, resume, preemption):
  config_lib.validate(config, "search")
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  w_src, a_src = search_splits(splits["train"], config.data.train_portion)
  s, m = config.search, config.model
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
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                      keep=config.checkpoint.keep)
  loop.prepare_workdir(workdir, config, resume=resume, has_checkpoint=bool(ckpt.steps()),
                       what="search")

  net = make_supernet(config, info.num_classes, info.image_shape[-1])
  schedule = bilevel.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, steps_per_epoch)
  w_tx = bilevel.make_w_tx(schedule, s.momentum, s.weight_decay, s.grad_clip)
  a_tx = bilevel.make_a_tx(s.a_lr, s.a_b1, s.a_b2, s.a_weight_decay)
  net.eval()
  graphdef_eval = nnx.split(net, nnx.Param, ArchParam, nnx.BatchStat)[0]
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  found = ckpt.restore_latest(state) if resume else None
  meta = _fresh_meta()
  if found:
    _, state, meta = found
    print(f"dnas: resuming {workdir} at epoch {meta['epoch']}, step {int(state.step)}",
          file=sys.stderr)
  dtype = utils.compute_dtype(config)
  latency = latency_setup(config, info, workdir)
  step_kwargs = dict(order=s.order, w_lr=schedule, momentum=s.momentum,
                     weight_decay=s.weight_decay, fd_r=s.fd_r, shardings=shardings, dtype=dtype,
                     hvp_remat=s.get("hvp_remat", False),
                     split=bilevel.PROGRAMS[s.get("programs", "auto")],
                     arch_objective=latency and make_arch_objective(config, latency[2]),
                     tau=(bilevel.per_epoch_anneal(s.tau_start, s.tau_end, s.epochs,
                                                   steps_per_epoch, s.tau_anneal)
                          if s.get("relaxation", "softmax") == "gumbel" else None))
  # Epochs before `arch_start_epoch` train the weights only (PC-DARTS's warm-up); each
  # step is compiled on its first use (split steps share their programs).
  arch_start = s.get("arch_start_epoch", 0)
  step, warmup_step = map(utils.compile_then_trim,
                          bilevel.make_search_steps(graphdef, w_tx, a_tx, **step_kwargs))
  eval_step = utils.compile_then_trim(bilevel.make_eval_step(
      graphdef_eval, shardings=shardings, dtype=dtype))
  augment = make_augment(info, crop_padding=config.data.crop_padding, flip=config.data.flip)
  batches = functools.partial(make_batches, batch_size=s.batch_size, augment=augment,
                              workers=config.data.workers, process=process)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  primary = jax.process_index() == 0  # one process writes the plain files
  if primary:
    loop.write_jsonl(metrics_path, meta["records"])  # drops lines past the checkpoint
  # A resumed run drops what the interrupted one logged after its checkpoint.
  summaries = Summaries(os.path.join(workdir, "tensorboard", "search"), enabled=primary,
                        purge_step=int(state.step) + 1 if found else None)
  start = time.time() - meta["elapsed"]
  bar = tqdm.tqdm(total=s.epochs * steps_per_epoch, initial=int(state.step),
                  disable=not progress, unit="step", dynamic_ncols=True)
  every = config.checkpoint.every_steps

  def save():
    ckpt.save(int(state.step), state, dict(meta, elapsed=time.time() - start))

  def preempted_message():
    return (f"SIGTERM: saved checkpoint {int(state.step)} in {ckpt.directory}; rerun the "
            f"same command to resume")

  try:
    for epoch in range(meta["epoch"], s.epochs):
      w_batches = batches(w_src, seed=config.seed, epoch=epoch, start=meta["batch"])
      a_batches = batches(a_src, seed=config.seed + 1, epoch=epoch, start=meta["batch"])
      sums = meta["sums"]
      for _ in range(meta["batch"], steps_per_epoch):
        state, metrics = (step if epoch >= arch_start else warmup_step)(
            state, parallel.put_batch(next(w_batches), mesh),
            parallel.put_batch(next(a_batches), mesh))
        metrics = {k: float(v) for k, v in parallel.to_host(metrics).items()}
        loop.check_finite(metrics, step=int(state.step),
                          phases={"a_": "architecture", "w_": "weight"})
        for k, v in metrics.items():
          sums[k] = sums.get(k, 0.0) + v
        meta.update(batch=meta["batch"] + 1, sums=sums)
        bar.update(1)
        bar.set_postfix(epoch=epoch, **{k: f"{metrics[k]:.3f}" for k in
                                         ("w_loss", "w_acc", "a_loss", "a_acc") if k in metrics},
                        **({"lat_ms": f"{meta['records'][-1]['predicted_latency_ms']:.3f}"}
                           if latency and meta["records"] else {}))
        if meta["batch"] == steps_per_epoch:
          break  # the epoch end saves (and answers a SIGTERM)
        if preemption.requested:
          save()
          raise loop.Preempted(preempted_message())
        if every and int(state.step) % every == 0:
          save()
      valid_loss, valid_acc = evaluate(
          lambda b: parallel.to_host(eval_step(state.params, state.alphas, state.batch_stats,
                                               parallel.put_batch(b, mesh))),
          batches(a_src, seed=0, epoch=0, train=False))
      alphas = parallel.to_host(state.alphas)
      a_normal = np.asarray(alphas["alphas_normal"].get_value())
      a_reduce = np.asarray(alphas["alphas_reduce"].get_value())
      genotype = genotype_of(alphas, m)
      record = {k: v / steps_per_epoch for k, v in sums.items()}
      record.update(epoch=epoch, lr=float(schedule(epoch * steps_per_epoch)),
                    valid_loss=valid_loss, valid_acc=valid_acc,
                    alpha_entropy_normal=alpha_entropy(a_normal),
                    alpha_entropy_reduce=alpha_entropy(a_reduce),
                    genotype=genotype.to_dict(), wall_time=time.time() - start)
      if latency:  # the derived network's latency on the table's device
        record["predicted_latency_ms"] = darts_latency.predict(latency[0], latency[1], genotype)
      meta["records"].append(record)
      meta["alphas_normal"].append(_softmax(a_normal).tolist())
      meta["alphas_reduce"].append(_softmax(a_reduce).tolist())
      meta.update(epoch=epoch + 1, batch=0, sums={})
      # Events on disk before the checkpoint that a resumed run purges after.
      summaries.scalars(int(state.step), record, "search")
      for kind in ("normal", "reduce"):
        summaries.op_weights(int(state.step), kind, meta[f"alphas_{kind}"][-1], m.primitives)
      summaries.flush()
      save()
      if primary:
        loop.write_jsonl(metrics_path, meta["records"])
        darts.save_genotype(genotype, os.path.join(workdir, "genotype.json"))
      lat = (f" predicted latency {record['predicted_latency_ms']:.3f} ms" if latency else "")
      bar.write(f"epoch {epoch}: w_acc {record['w_acc']:.3f} valid_acc {valid_acc:.3f}{lat} "
                f"genotype {genotype}")
      if preemption.requested and epoch + 1 < s.epochs:
        raise loop.Preempted(preempted_message())
  finally:
    bar.close()
    ckpt.close()
    summaries.close()
  genotype = darts.Genotype.from_dict(meta["records"][-1]["genotype"])
  history = {"normal": [np.asarray(a) for a in meta["alphas_normal"]],
             "reduce": [np.asarray(a) for a in meta["alphas_reduce"]]}
  if primary:
    np.savez(os.path.join(workdir, "alphas.npz"), normal=np.stack(history["normal"]),
             reduce=np.stack(history["reduce"]))
    plotting.plot_alphas(history, tuple(m.primitives), os.path.join(workdir, "alphas.png"))
    plotting.plot_genotype(genotype, os.path.join(workdir, "genotype"))
  return genotype
