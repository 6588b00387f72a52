"""The search loop behind `python -m dnas.search`: data -> supernet -> bilevel steps ->
genotype, metrics.jsonl and alphas.png in the work directory."""

import json
import os
import time

import jax
import numpy as np
import tqdm
from flax import nnx

from dnas import bilevel, config as config_lib, plotting
from dnas.arch import ArchParam
from dnas.data.pipeline import Augment, get_dataset, make_batches, search_splits
from dnas.spaces import darts
from dnas.utils import evaluate


def alpha_entropy(alphas: np.ndarray) -> float:
  """Mean over edges of the entropy (nats) of softmax(alpha), f32[E, K] -> float."""
  p = np.exp(alphas - alphas.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return float(np.mean(-np.sum(p * np.log(p + 1e-12), -1)))


def _softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def run_search(config, workdir: str, progress: bool = True) -> darts.Genotype:
  """Runs a DARTS search as configured and writes its results into `workdir`.

  Returns the final genotype.
  """
  config_lib.validate(config, "search")
  info, splits = get_dataset(config.data.name, config.data.data_dir)
  w_src, a_src = search_splits(splits["train"], config.data.train_portion)
  s, m = config.search, config.model
  steps_per_epoch = min(len(w_src), len(a_src)) // s.batch_size
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(f"search.batch_size {s.batch_size} is larger than a search "
                                 f"split ({min(len(w_src), len(a_src))} examples)")
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))

  net = darts.Network(m.C, info.num_classes, m.layers, m.steps, m.multiplier, m.stem_multiplier,
                      in_channels=info.image_shape[-1], primitives=tuple(m.primitives),
                      remat=m.remat, rngs=nnx.Rngs(config.seed))
  schedule = bilevel.per_epoch_cosine(s.w_lr, s.w_lr_min, s.epochs, steps_per_epoch)
  w_tx = bilevel.make_w_tx(schedule, s.momentum, s.weight_decay, s.grad_clip)
  a_tx = bilevel.make_a_tx(s.a_lr, s.a_b1, s.a_b2, s.a_weight_decay)
  net.eval()
  graphdef_eval = nnx.split(net, nnx.Param, ArchParam, nnx.BatchStat)[0]
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(config.seed))
  step = bilevel.make_search_step(graphdef, w_tx, a_tx, order=s.order, w_lr=schedule,
                                  momentum=s.momentum, weight_decay=s.weight_decay, fd_r=s.fd_r)
  eval_step = bilevel.make_eval_step(graphdef_eval)
  augment = Augment(info.mean, info.std, config.data.crop_padding, config.data.flip)

  history = {"normal": [], "reduce": []}
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  open(metrics_path, "w").close()
  start = time.time()
  bar = tqdm.tqdm(total=s.epochs * steps_per_epoch, disable=not progress, unit="step",
                  dynamic_ncols=True)
  genotype = None
  for epoch in range(s.epochs):
    w_batches = make_batches(w_src, batch_size=s.batch_size, seed=config.seed, epoch=epoch,
                             augment=augment)
    a_batches = make_batches(a_src, batch_size=s.batch_size, seed=config.seed + 1, epoch=epoch,
                             augment=augment)
    sums = {}
    for _ in range(steps_per_epoch):
      state, metrics = step(state, next(w_batches), next(a_batches))
      metrics = jax.device_get(metrics)
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      bar.update(1)
      bar.set_postfix(epoch=epoch, w_loss=f"{metrics['w_loss']:.3f}",
                      w_acc=f"{metrics['w_acc']:.2f}", a_loss=f"{metrics['a_loss']:.3f}",
                      a_acc=f"{metrics['a_acc']:.2f}")
    if not all(np.isfinite(v) for v in sums.values()):
      raise FloatingPointError(f"non-finite search metrics in epoch {epoch}: {sums}")
    valid_loss, valid_acc = evaluate(
        lambda b: eval_step(state.params, state.alphas, state.batch_stats, b),
        make_batches(a_src, batch_size=s.batch_size, seed=0, epoch=0, augment=augment,
                     train=False))
    a_normal = np.asarray(jax.device_get(state.alphas["alphas_normal"].get_value()))
    a_reduce = np.asarray(jax.device_get(state.alphas["alphas_reduce"].get_value()))
    genotype = darts.derive_genotype(a_normal, a_reduce, steps=m.steps, multiplier=m.multiplier,
                                     primitives=tuple(m.primitives))
    history["normal"].append(_softmax(a_normal))
    history["reduce"].append(_softmax(a_reduce))
    record = {k: v / steps_per_epoch for k, v in sums.items()}
    record.update(epoch=epoch, lr=float(schedule(epoch * steps_per_epoch)), valid_loss=valid_loss,
                  valid_acc=valid_acc, alpha_entropy_normal=alpha_entropy(a_normal),
                  alpha_entropy_reduce=alpha_entropy(a_reduce), genotype=genotype.to_dict(),
                  wall_time=time.time() - start)
    with open(metrics_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    darts.save_genotype(genotype, os.path.join(workdir, "genotype.json"))
    bar.write(f"epoch {epoch}: w_acc {record['w_acc']:.3f} valid_acc {valid_acc:.3f} "
              f"genotype {genotype}")
  bar.close()
  np.savez(os.path.join(workdir, "alphas.npz"), normal=np.stack(history["normal"]),
           reduce=np.stack(history["reduce"]))
  plotting.plot_alphas(history, tuple(m.primitives), os.path.join(workdir, "alphas.png"))
  return genotype
