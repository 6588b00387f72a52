"""Searches the blocks of `model.OwnNet` on the digits set with dnas's bilevel step, then
retrains the discretised network from scratch.

python -m experiments.own_model.search --workdir=runs/own [--order=second]
    [--latency_weight=0.05] [--epochs=10]

What dnas provides and the model does not know about: the bilevel step (Optax, first or
second order), Orbax checkpoints with resume, the latency table of its candidate ops
and the differentiable expected latency, and the argmax discretisation of each MixedOp.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from dnas import arch, bilevel, latency_lib, utils
from dnas.checkpoint import Checkpointer
from dnas.data.pipeline import get_dataset, make_augment, make_batches, search_splits
from experiments.own_model.model import CANDIDATES, OwnNet, describe


def batches(source, batch_size, augment, epoch, start=0, train=True, seed=0):
  return make_batches(source, batch_size=batch_size, seed=seed, epoch=epoch, augment=augment,
                      train=train, start=start)


def accuracy_of(net, source, batch_size, augment):
  """Test accuracy of `net` in eval mode (padded examples masked out)."""
  net.eval()
  forward = nnx.jit(lambda m, x: m(x))
  correct = total = 0.0
  for b in batches(source, batch_size, augment, 0, train=False):
    pred = np.argmax(np.asarray(forward(net, jnp.asarray(b["image"]))), -1)
    mask = b.get("mask", np.ones(len(pred)))
    correct += float(np.sum((pred == b["label"]) * mask))
    total += float(np.sum(mask))
  net.train()
  return correct / total


def retrain(net, train_source, *, epochs, batch_size, augment, lr=0.05, max_steps=0):
  """Plain NNX training of the discrete network (SGD, cosine, weight decay 3e-4)."""
  steps = len(train_source) // batch_size
  steps = min(steps, max_steps) if max_steps else steps
  opt = nnx.Optimizer(net, bilevel.make_w_tx(optax.cosine_decay_schedule(lr, epochs * steps)),
                      wrt=nnx.Param)

  @nnx.jit
  def step(net, opt, image, label):
    def loss_fn(net):
      return bilevel.cross_entropy(net(image), label)
    loss, grads = nnx.value_and_grad(loss_fn)(net)
    opt.update(net, grads)
    return loss

  for epoch in range(epochs):
    for i, b in enumerate(batches(train_source, batch_size, augment, epoch, seed=1)):
      if i == steps:
        break
      step(net, opt, jnp.asarray(b["image"]), jnp.asarray(b["label"]))
  return net


def run(workdir, *, epochs=10, order="first", width=16, blocks=2, batch_size=64,
        latency_weight=0.0, retrain_epochs=30, max_steps=0, repeats=30, seed=0, log=print):
  """Search, discretise, retrain; returns (and writes to workdir/result.json) the result."""
  os.makedirs(workdir, exist_ok=True)
  info, splits = get_dataset("digits")
  w_src, a_src = search_splits(splits["train"], 0.5)
  augment = make_augment(info, crop_padding=1)
  steps = min(len(w_src), len(a_src)) // batch_size
  steps = min(steps, max_steps) if max_steps else steps
  net = OwnNet(width=width, blocks=blocks, rngs=nnx.Rngs(seed))

  # Latency: each candidate op timed alone at the shape its MixedOp sees, here.
  example = jnp.zeros((batch_size,) + info.image_shape, jnp.float32)
  table_path = os.path.join(workdir, "latency_table.json")
  if os.path.exists(table_path):
    table = latency_lib.LatencyTable.load(table_path)
  else:
    table = latency_lib.profile_mixed_ops(net, example, repeats=repeats)
    table.save(table_path)
  expected = latency_lib.MixedOpLatency.build(table, net, example)
  objective = None
  if latency_weight > 0:
    objective = latency_lib.arch_objective(
        latency_lib.make_objective("proxyless", weight=latency_weight), expected)

  # The bilevel search: dnas's step over the model's explicit state.
  schedule = bilevel.per_epoch_cosine(0.025, 0.001, epochs, steps)
  w_tx, a_tx = bilevel.make_w_tx(schedule), bilevel.make_a_tx(lr=3e-3)
  graphdef, state = bilevel.init_search_state(net, w_tx, a_tx, jax.random.key(seed))
  step = bilevel.make_search_step(graphdef, w_tx, a_tx, order=order, w_lr=schedule,
                                  arch_objective=objective)
  ckpt = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), keep=2)
  found = ckpt.restore_latest(state)
  start_epoch = 0
  if found:
    _, state, meta = found
    start_epoch = meta["epoch"]
    log(f"resuming at epoch {start_epoch}")
  t0 = time.time()
  for epoch in range(start_epoch, epochs):
    w_it = batches(w_src, batch_size, augment, epoch, seed=seed)
    a_it = batches(a_src, batch_size, augment, epoch, seed=seed + 1)
    for _ in range(steps):
      state, metrics = step(state, next(w_it), next(a_it))
    ckpt.save(int(state.step), state, {"epoch": epoch + 1})
    nnx.update(net, state.alphas)
    log(f"epoch {epoch}: w_acc {float(metrics['w_acc']):.3f} a_acc "
        f"{float(metrics['a_acc']):.3f} expected latency {float(expected(state.alphas)):.3f} ms "
        f"{describe(arch.choices(net))}")
  ckpt.close()
  search_s = time.time() - t0

  # Discretise (argmax per MixedOp) and retrain a fresh network with those picks.
  nnx.update(net, state.alphas)
  picks = arch.choices(net)
  final = arch.discretize(OwnNet(width=width, blocks=blocks, rngs=nnx.Rngs(seed + 1)), picks)
  t0 = time.time()
  retrain(final, splits["train"], epochs=retrain_epochs, batch_size=batch_size,
          augment=augment, max_steps=max_steps)
  test_acc = accuracy_of(final, splits["test"], batch_size, augment)
  final.eval()
  measured = latency_lib.time_call(*latency_lib.jit_eval(final), example, repeats=repeats)
  result = dict(picks=describe(picks), test_acc=test_acc, search_s=search_s,
                retrain_s=time.time() - t0, predicted_ms=expected.predict(picks),
                measured_ms=measured["median"], params=utils.count_params(final, None),
                order=order, latency_weight=latency_weight, epochs=epochs)
  with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


_WORKDIR = flags.DEFINE_string("workdir", "runs/own_model", "Output directory.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Search epochs.")
_ORDER = flags.DEFINE_enum("order", "first", bilevel.ORDERS, "Bilevel order.")
_WIDTH = flags.DEFINE_integer("width", 16, "Channels of the first stage.")
_LATENCY = flags.DEFINE_float("latency_weight", 0.0, "ProxylessNAS weight of the expected "
                              "latency (ms) in the architecture loss; 0: off.")
_RETRAIN = flags.DEFINE_integer("retrain_epochs", 30, "Epochs of retraining.")


def main(argv):
  del argv
  utils.configure_xla()
  result = run(_WORKDIR.value, epochs=_EPOCHS.value, order=_ORDER.value, width=_WIDTH.value,
               latency_weight=_LATENCY.value, retrain_epochs=_RETRAIN.value)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
