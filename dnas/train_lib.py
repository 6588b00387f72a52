"""Retraining a found cell from scratch, behind `python -m dnas.train` (reference train.py):
SGD with per-epoch cosine learning rate, cutout, drop path linearly increased over the
epochs, auxiliary loss, optional label smoothing. Reports test accuracy."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx

from dnas import bilevel, config as config_lib
from dnas.data.pipeline import Augment, get_dataset, make_batches
from dnas.spaces import darts
from dnas.utils import count_params, evaluate

NETWORKS = {"cifar": darts.NetworkCIFAR, "imagenet": darts.NetworkImageNet}


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Cross entropy against (1 - eps) onehot + eps / K (reference CrossEntropyLabelSmooth),
  f32[N, K], int[N] -> f32[]."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_train_step(graphdef, tx, *, auxiliary_weight: float, label_smoothing: float):
  """step(params, stats, opt_state, batch, key, drop_path_prob) -> (params, stats, opt_state,
  metrics), jitted; params, stats and opt_state donated."""
  def loss_fn(params, stats, batch, key, p):
    net = nnx.merge(graphdef, params, stats, copy=True)
    logits, logits_aux = net(batch["image"], key=key, drop_path_prob=p)
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

  return jax.jit(step, donate_argnums=(0, 1, 2))


def make_eval_step(graphdef_eval):
  """eval(params, stats, batch) -> (sum of losses, number correct), running BN stats."""
  def step(params, stats, batch):
    logits, _ = nnx.merge(graphdef_eval, params, stats, copy=True)(batch["image"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return losses.sum(), jnp.sum(jnp.argmax(logits, -1) == batch["label"])
  return jax.jit(step)


def _evaluate(eval_step, params, stats, source, batch_size, augment):
  return evaluate(lambda b: eval_step(params, stats, b),
                  make_batches(source, batch_size=batch_size, seed=0, epoch=0, augment=augment,
                               train=False))


def run_train(config, genotype_path: str, workdir: str | None = None,
              progress: bool = True) -> dict:
  """Trains NETWORKS[config.train.network] built from the genotype file; writes
  train_metrics.jsonl, train_result.json and the trained variables (Orbax) into
  `workdir` (default: the genotype's directory). Returns the result dict."""
  config_lib.validate(config, "train")
  genotype = darts.load_genotype(genotype_path)
  workdir = workdir or os.path.dirname(os.path.abspath(genotype_path))
  os.makedirs(workdir, exist_ok=True)
  info, splits = get_dataset(config.data.name, config.data.data_dir)
  t = config.train
  steps_per_epoch = len(splits["train"]) // t.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(f"train.batch_size {t.batch_size} is larger than the train "
                                 f"split ({len(splits['train'])} examples)")
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

  net = NETWORKS[t.network](genotype, t.C, info.num_classes, t.layers, t.auxiliary,
                            t.drop_path_prob, in_channels=info.image_shape[-1],
                            rngs=nnx.Rngs(config.seed))
  # Reference train.py: CosineAnnealingLR(epochs) stepped per epoch, SGD, clipping.
  schedule = bilevel.per_epoch_cosine(t.lr, t.lr_min, t.epochs, steps_per_epoch)
  tx = bilevel.make_w_tx(schedule, t.momentum, t.weight_decay, t.grad_clip)
  net.eval()
  graphdef_eval = nnx.split(net, nnx.Param, nnx.BatchStat)[0]
  net.train()
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  opt_state = tx.init(params)
  step = make_train_step(graphdef, tx, auxiliary_weight=t.auxiliary_weight,
                         label_smoothing=t.label_smoothing)
  eval_step = make_eval_step(graphdef_eval)
  augment = Augment(info.mean, info.std, config.data.crop_padding, config.data.flip, t.cutout)
  key = jax.random.key(config.seed)

  metrics_path = os.path.join(workdir, "train_metrics.jsonl")
  open(metrics_path, "w").close()
  start = time.time()
  bar = tqdm.tqdm(total=t.epochs * steps_per_epoch, disable=not progress, unit="step",
                  dynamic_ncols=True)
  for epoch in range(t.epochs):
    p = t.drop_path_prob * epoch / t.epochs  # reference: linear increase over the epochs
    batches = make_batches(splits["train"], batch_size=t.batch_size, seed=config.seed,
                           epoch=epoch, augment=augment)
    sums = {"loss": 0.0, "acc": 0.0}
    for i in range(steps_per_epoch):
      k = jax.random.fold_in(key, epoch * steps_per_epoch + i)
      params, stats, opt_state, metrics = step(params, stats, opt_state, next(batches), k, p)
      metrics = jax.device_get(metrics)
      for name in sums:
        sums[name] += float(metrics[name])
      bar.update(1)
      bar.set_postfix(epoch=epoch, loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc']:.2f}")
    if not np.isfinite(sums["loss"]):
      raise FloatingPointError(f"non-finite training loss in epoch {epoch}")
    valid_loss, valid_acc = _evaluate(eval_step, params, stats, splits["validation"],
                                      t.batch_size, augment)
    record = dict(epoch=epoch, lr=float(schedule(epoch * steps_per_epoch)), drop_path_prob=p,
                  train_loss=sums["loss"] / steps_per_epoch, train_acc=sums["acc"] / steps_per_epoch,
                  valid_loss=valid_loss, valid_acc=valid_acc, wall_time=time.time() - start)
    with open(metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")
  bar.close()
  test_loss, test_acc = _evaluate(eval_step, params, stats, splits["test"], t.batch_size, augment)
  nnx.update(net, params, stats)
  ckpt_dir = os.path.join(os.path.abspath(workdir), "trained")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(ckpt_dir, nnx.state(net), force=True)
  result = dict(genotype=genotype.to_dict(), network=t.network, params=count_params(net),
                test_loss=test_loss, test_acc=test_acc, valid_acc=valid_acc, epochs=t.epochs,
                wall_time=time.time() - start, checkpoint=ckpt_dir)
  with open(os.path.join(workdir, "train_result.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result
