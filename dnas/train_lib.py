"""Retraining a found cell from scratch, behind `python -m dnas.train` (reference train.py):
SGD with per-epoch cosine learning rate, cutout, drop path linearly increased over the
epochs, auxiliary loss, optional label smoothing. Reports test accuracy."""

import functools
import json
import os

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dnas import (bilevel, checkpoint, config as config_lib, cpu, execution, kernels, loop, optim,
                  parallel, spaces, utils)
from dnas.checkpoint import Checkpointer, save_model
from dnas.data.pipeline import (auto_workers, dataset_info, eval_batch_spec, get_dataset,
                                make_augment, make_batches)
from dnas.evaluation import evaluate, make_eval_step
from dnas.utils import count_params


def build_network(config, arch, info, rngs: nnx.Rngs) -> nnx.Module:
  """The final network of `arch` that `config.train` retrains, for data `info`
  (`DatasetInfo`), as `config.space` builds it."""
  return spaces.get(config.space).final(arch, config_lib.space_section(config), config.train,
                                        info, rngs)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Cross entropy against (1 - eps) onehot + eps / K (reference CrossEntropyLabelSmooth),
  f32[N, K], int[N] -> f32[]."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(graphdef, tx, *, auxiliary_weight: float, label_smoothing: float,
                    shardings=None, dtype=None, apply=None, jit: bool = True):
  """step(params, stats, opt_state, batch, key, drop_path_prob) -> (params, stats, opt_state,
  metrics), jitted (unless `jit=False`); params, stats and opt_state donated. `shardings`: ((params, stats,
  opt_state) shardings, batch sharding) from `dnas.parallel`. `dtype`: the activations'
  dtype (weights cast where used, float32 logits, loss and gradients). `apply(net, x, *,
  key, drop_path_prob) -> (logits, auxiliary logits or None)`: how the space calls its
  final network (default: `net(x, key=, drop_path_prob=)`, the DARTS networks)."""
  apply = apply or _apply

  def loss_fn(params, stats, batch, key, p):
    net = nnx.merge(graphdef, utils.cast_floating(params, dtype), stats, copy=True)
    logits, logits_aux = apply(net, utils.cast_floating(batch["image"], dtype), key=key,
                               drop_path_prob=p)
    logits = utils.at_least_float32(logits)
    logits_aux = None if logits_aux is None else utils.at_least_float32(logits_aux)
    loss = smoothed_cross_entropy(logits, batch["label"], label_smoothing)
    if logits_aux is not None:
      loss = loss + auxiliary_weight * smoothed_cross_entropy(logits_aux, batch["label"],
                                                              label_smoothing)
    return loss, (logits, nnx.state(net, nnx.BatchStat))

  def step(params, stats, opt_state, batch, key, p):
    (loss, (logits, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats, batch, key, p)
    updates, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, stats, opt_state, dict(loss=loss, acc=bilevel.accuracy(logits, batch["label"]))

  if not jit:
    return step
  step = kernels.for_local_devices(step)
  if shardings is None:
    return jax.jit(step, donate_argnums=(0, 1, 2))
  (params_sh, stats_sh, opt_sh), batch_sh = shardings
  rep = NamedSharding(batch_sh.mesh, P())
  return jax.jit(step, donate_argnums=(0, 1, 2),
                 in_shardings=(params_sh, stats_sh, opt_sh, batch_sh, rep, rep),
                 out_shardings=(params_sh, stats_sh, opt_sh, rep))



def _apply(net, x, *, key=None, drop_path_prob=None):
  return net(x, key=key, drop_path_prob=drop_path_prob)


def run_train(config, arch_source: str, workdir: str | None = None,
              progress: bool = True, resume: bool = True) -> dict:
  """Trains the final network of the architecture in `arch_source` (a file written by
  the search, or a published name such as DARTS_V2) as `config.train` says; writes
  train_metrics.jsonl, train_result.json and the trained variables (Orbax) into `workdir`
  (default: the architecture file's directory, or runs/train-<name>). Checkpoints go to
  `workdir/train_checkpoints` and a rerun resumes from them, as in the search. Returns
  the result dict."""
  # SIGTERM from the start: one arriving while data load or compilation runs is answered
  # after the first step, with a checkpoint.
  with loop.Preemption() as preemption:
    return _train(config, arch_source, workdir, progress, resume, preemption)


def _train(config, arch_source, workdir, progress, resume, preemption):
  config_lib.validate(config, "train")
  space = spaces.get(config.space)
  arch = spaces.load(space, arch_source)
  if workdir is None:
    workdir = (os.path.join("runs", f"train-{arch_source}") if arch_source in space.published
               else os.path.dirname(os.path.abspath(arch_source)))
  loop.check_workdir(workdir)
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  t = config.train
  mesh = parallel.make_mesh(config.mesh.devices, config.mesh.fsdp)
  steps_per_epoch = loop.epoch_steps(len(splits["train"]), t.batch_size, devices=mesh.size,
                                     max_steps=config.max_steps_per_epoch,
                                     key="train.batch_size", split="the train split")
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "train_checkpoints"),
                      keep=config.checkpoint.keep)
  loop.prepare_workdir(workdir, config, resume=resume, has_checkpoint=bool(ckpt.steps()),
                       what="train")

  net = build_network(config, arch, info, nnx.Rngs(config.seed))
  # Reference train.py: CosineAnnealingLR(epochs) stepped per epoch, SGD, clipping.
  schedule = optim.per_epoch_cosine(t.lr, t.lr_min, t.epochs, steps_per_epoch)
  tx = optim.make_w_tx(schedule, t.momentum, t.weight_decay, t.grad_clip, t.nesterov)
  net.eval()
  graphdef_eval = nnx.split(net, nnx.Param, nnx.BatchStat)[0]
  net.train()
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  state = (params, stats, tx.init(params))
  shardings = (parallel.state_shardings(state, mesh), parallel.batch_sharding(mesh))
  state = parallel.put_state(state, shardings[0])
  found, state, meta = loop.restore(ckpt, state, resume=resume, workdir=workdir,
                                    steps_per_epoch=steps_per_epoch)
  dtype = utils.compute_dtype(config)
  pure_step = make_train_step(graphdef, tx, auxiliary_weight=t.auxiliary_weight,
                              label_smoothing=t.label_smoothing, dtype=dtype,
                              apply=space.final_apply, jit=False)

  def tree_step(state, batch, key, p):
    *state, metrics = pure_step(*state, batch, key, p)
    return tuple(state), metrics

  # The loop carries the state as a short list of buffers (`loop.Flat`).
  flat = loop.Flat(state, shardings[0])
  rep = NamedSharding(mesh, P())
  # What the programs compute beyond dnas's code and their arguments' shapes: their
  # traces are kept on disk under it (`dnas.trace_cache`).
  cache_key = repr((config.to_dict(), space.to_dict(arch), info, steps_per_epoch))
  train_step = cpu.compile_then_trim(flat.jit(
      kernels.for_local_devices(tree_step), in_shardings=(shardings[0], shardings[1], rep, rep),
      out_shardings=(shardings[0], rep), cache_key=f"{cache_key} training step"))
  eval_step = cpu.compile_then_trim(make_eval_step(
      graphdef_eval, shardings=(shardings[0][:2], shardings[1]), dtype=dtype,
      apply=lambda net, x: space.final_apply(net, x), cache_key=f"{cache_key} evaluation"))
  augment = make_augment(info, crop_padding=config.data.crop_padding, flip=config.data.flip,
                         cutout=t.cutout)
  make = functools.partial(make_batches, batch_size=t.batch_size, augment=augment,
                           workers=auto_workers(config.data.workers),
                           process=parallel.process_slice(t.batch_size))
  batches = loop.Pipeline(lambda epoch, start: make(
      splits["train"], seed=config.seed, epoch=epoch, start=start, epochs=t.epochs,
      batches_per_epoch=steps_per_epoch))
  key = jax.random.key(config.seed)

  def evaluate_on(state, split):
    params, stats, _ = state
    return evaluate(lambda b: parallel.to_host(eval_step((params, stats),
                                                         parallel.put_batch(b, mesh), {})),
                    make(splits[split], seed=0, epoch=0, train=False))

  lr_at = jax.jit(schedule)

  def drop_prob(epoch):
    return t.drop_path_prob * epoch / t.epochs  # reference: linear increase over the epochs

  def step(state, batch, epoch, i):
    k = jax.random.fold_in(key, epoch * steps_per_epoch + i)
    return train_step(state, parallel.put_batch(batch, mesh), k, drop_prob(epoch))

  def end_epoch(leaves, epoch, means):
    valid_loss, valid_acc = evaluate_on(flat.tree(leaves), "validation")
    return dict(epoch=epoch, lr=float(lr_at(np.int32(epoch * steps_per_epoch))),
                drop_path_prob=drop_prob(epoch), train_loss=means["loss"],
                train_acc=means["acc"], valid_loss=valid_loss, valid_acc=valid_acc)

  # Beside the search's (same work directory by default).
  run = loop.EpochLoop(name="train", workdir=workdir, ckpt=ckpt, meta=meta, epochs=t.epochs,
                       steps_per_epoch=steps_per_epoch, every_steps=config.checkpoint.every_steps,
                       preemption=preemption, metrics_file="train_metrics.jsonl",
                       progress=progress, resumed=bool(found), postfix_keys=("loss", "acc"),
                       to_tree=flat.tree)
  # CPU: the evaluation (and the records' learning rate) compile in the background while
  # the first step compiles.
  ahead = []
  if hasattr(eval_step, "precompile"):
    batch = eval_batch_spec(splits["validation"], batch_size=t.batch_size, augment=augment,
                            sharding=shardings[1])
    ahead = [(eval_step, (execution.specs(state[:2]), batch, {})),
             (lr_at, (jax.ShapeDtypeStruct((), np.int32),))]
  state = flat.tree(run.run(flat.leaves(state), batches, step, end_epoch,
                            ahead={"the evaluation": ahead}))
  test_loss, test_acc = evaluate_on(state, "test")
  params, stats, _ = state
  nnx.update(net, params, stats)
  ckpt_dir = os.path.join(os.path.abspath(workdir), "trained")
  save_model(ckpt_dir, nnx.state(net), genotype=space.to_dict(arch), config=config.to_dict())
  result = dict(genotype=space.to_dict(arch), space=space.name, params=count_params(net),
                test_loss=test_loss, test_acc=test_acc,
                valid_acc=meta["records"][-1]["valid_acc"], epochs=t.epochs,
                wall_time=run.elapsed(), checkpoint=ckpt_dir)
  if run.primary:
    with open(os.path.join(workdir, "train_result.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result


class TrainedError(ValueError):
  """A `dnas.train` checkpoint (or an export setting) that cannot be used."""


def load_trained(directory: str):
  """(net in eval mode, config, architecture, DatasetInfo) of a `dnas.train` checkpoint."""
  if not os.path.isdir(directory):
    raise TrainedError(f"--trained {directory}: no such directory (dnas.train writes "
                      f"<workdir>/trained)")
  try:
    genotype, config = checkpoint.load_model_meta(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise TrainedError(f"--trained {directory} is not a dnas.train checkpoint with genotype "
                      f"and config ({type(e).__name__})") from None
  config = ml_collections.ConfigDict(config)
  try:
    space = spaces.get(config.space)
  except ValueError as e:
    raise TrainedError(f"--trained {directory}: {e}; for a space of your own, pass "
                      f"--config=<the config file that registers it>") from None
  genotype = space.from_dict(genotype)
  info = dataset_info(config.data.name, config.data.image_size, config.data.data_dir)
  model = config_lib.space_section(config)
  abstract = nnx.eval_shape(lambda: space.final(genotype, model, config.train, info,
                                                nnx.Rngs(0)))
  graphdef, target = nnx.split(abstract)
  want = {"/".join(map(str, p)): tuple(v.get_value().shape)
          for p, v in nnx.to_flat_state(target)}
  try:
    have = checkpoint.model_variable_shapes(directory)
  except Exception as e:  # pylint: disable=broad-except
    raise TrainedError(f"--trained {directory}: cannot read its variables' metadata "
                      f"({type(e).__name__})") from None
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise TrainedError(
          f"--trained {directory}: variable {name} is {have.get(name, 'missing')} in the "
          f"checkpoint but {want.get(name, 'absent')} in the network that its config and "
          f"genotype describe")
  try:
    variables = checkpoint.load_model_variables(directory, target)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    raise TrainedError(f"--trained {directory}: its variables do not fit the network its "
                      f"config and genotype describe ({type(e).__name__}: {reason})") from None
  net = nnx.merge(graphdef, variables)
  net.eval()
  return net, config, genotype, info
