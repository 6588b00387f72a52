"""DARTS on CIFAR-10 with the paper's hyperparameters (Liu et al. 2019, Sec. 3.1-3.2;
reference train_search.py and train.py).

python -m dnas.search --config=dnas/configs/cifar10_darts.py --workdir=runs/c10
python -m dnas.train --config=dnas/configs/cifar10_darts.py --genotype=runs/c10/genotype.json

Needs TFDS-prepared CIFAR-10 (`--config.data.data_dir`), which arrives with the TFDS
pipelines; until then it stops with a message saying so.
"""

import ml_collections

from dnas.spaces.darts.ops import PRIMITIVES


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 2
  # Activations' dtype: "float32" or "bfloat16" (weights, alphas, BatchNorm statistics and
  # optimiser states stay float32).
  c.dtype = "float32"
  # "darts", or "pc_darts" (Xu et al. 2020): each edge mixes 1/model.pc_k of the
  # channels, and edge-normalisation weights beta decide the edges.
  c.method = "darts"
  c.max_steps_per_epoch = 0
  c.data = dict(name="cifar10", data_dir="", train_portion=0.5, image_size=224, workers=0,
                crop_padding=4, flip=True)
  c.model = dict(C=16, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 primitives=PRIMITIVES, remat=False, pc_k=4)
  # hvp_remat: `order=second`'s Hessian-vector product recomputes cell activations (its
  # tangents double them; without it batch 64 does not fit 24 GiB on CPU).
  # programs: "one" jitted program per step; "split" into a few that share one gradient
  # program (first order: about 40 % less compile time, slower architecture steps);
  # "auto": split for the second-order methods only.
  # relaxation: "softmax" (DARTS) or "gumbel" (FBNet, GDAS: op weights sampled with a
  # temperature annealed per epoch from tau_start to tau_end, "linear" or "exponential";
  # gumbel_hard: straight-through one-hot, each edge runs only its sampled op).
  c.search = dict(epochs=50, batch_size=64, order="first", w_lr=0.025, w_lr_min=0.001,
                  momentum=0.9, weight_decay=3e-4, grad_clip=5.0, a_lr=3e-4, a_b1=0.5,
                  a_b2=0.999, a_weight_decay=1e-3, fd_r=0.01, arch_start_epoch=0,
                  relaxation="softmax", gumbel_hard=False, tau_start=10.0, tau_end=0.1,
                  tau_anneal="linear", hvp_remat=True, programs="auto")
  c.train = dict(network="cifar", C=36, layers=20, epochs=600, batch_size=96, lr=0.025,
                 lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary=True,
                 auxiliary_weight=0.4, drop_path_prob=0.2, cutout=16, label_smoothing=0.0)
  # Devices of the data-parallel mesh (0: all) and how many of them shard large weights.
  # Latency-aware search (FBNet, ProxylessNAS): objective "none" (default), "fbnet"
  # (ce * fbnet_alpha * log(ms) ** fbnet_beta), "proxyless" (ce + weight * ms) or "target"
  # (ce + weight * max(0, ms / target_ms - 1)). `table`: a JSON latency table (README);
  # empty: measure one on this device at the start of the search (written to the work
  # directory). The table is for the final network of `train.*` at `batch_size`.
  c.latency = dict(objective="none", table="", weight=0.0, fbnet_alpha=0.2, fbnet_beta=0.6,
                   target_ms=0.0, batch_size=1, repeats=50, allow_foreign_table=False)
  c.mesh = dict(devices=0, fsdp=1)
  c.checkpoint = dict(every_steps=100, keep=3)
  return c
