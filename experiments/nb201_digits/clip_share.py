"""How much NAS-Bench-201's reference clip differs from dnas's: AutoDL's search scripts
clip the norm over all parameters, architecture logits included (the train loss's
gradient plus the one the architecture step left), dnas over the weights alone. Prints,
at initialisation and for each search workdir given, over 8 (weight, architecture) batch
pairs: the weights' gradient norm, the alphas', and the largest ratio of the two clip
coefficients (1.0: the same step).

python experiments/nb201_digits/clip_share.py runs/eval13_second/seed_0   # any nb201 digits search
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import config as config_lib, search_lib, spaces
from dnas.bilevel import MODEL_STATE, ArchParam
from dnas.configs import nb201 as nb201_config
from dnas.data.pipeline import get_dataset, make_augment, make_batches, search_splits


def norm(tree) -> float:
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


def clip_facts(net, w_batches, a_batches, clip: float) -> np.ndarray:
  """f64[B, 4]: |g_w|, |g_alpha| (train + validation), dnas's and the reference's clip
  coefficients, per batch pair."""
  net.train()
  graphdef, params, alphas, stats = nnx.split(net, nnx.Param, ArchParam, MODEL_STATE)

  def loss(p, a, b):
    logits = nnx.merge(graphdef, p, a, stats, copy=True)(jnp.asarray(b["image"]))
    labels = jnp.asarray(b["label"])[:, None]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels, 1))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
  rows = []
  for bw, ba in zip(w_batches, a_batches):
    g_w, g_a_train = grads(params, alphas, bw)
    _, g_a_val = grads(params, alphas, ba)
    nw, na = norm(g_w), norm(jax.tree.map(jnp.add, g_a_train, g_a_val))
    rows.append((nw, na, min(1.0, clip / nw), min(1.0, clip / np.hypot(nw, na))))
  return np.asarray(rows)


def main(workdirs):
  config = nb201_config.get_config()
  info, splits = get_dataset(config.data.name, config.data.data_dir, config.data.image_size)
  w_src, a_src = search_splits(splits["train"], config.data.train_portion)
  augment = make_augment(info)
  batches = [list(make_batches(src, batch_size=config.search.batch_size, seed=0, epoch=0,
                               augment=augment, train=True))[:8] for src in (w_src, a_src)]
  nets = [("initialisation", spaces.get("nb201").supernet(config_lib.space_section(config),
                                                          info, nnx.Rngs(0)))]
  nets += [(d, search_lib.load_supernet(config, d)) for d in workdirs]
  for name, net in nets:
    r = clip_facts(net, *batches, clip=config.search.grad_clip)
    print(f"{name}: |g_w| median {np.median(r[:, 0]):.3f}, |g_alpha| median "
          f"{np.median(r[:, 1]):.4f} (ratio median {np.median(r[:, 1] / r[:, 0]):.3f}), "
          f"clip coefficient dnas/reference max {np.max(r[:, 2] / r[:, 3]):.5f}")


if __name__ == "__main__":
  main(sys.argv[1:])
