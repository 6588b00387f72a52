"""Default: DARTS search and retraining on the embedded digits set (no download).

python -m dnas.search --workdir=runs/digits
python -m dnas.train --genotype=runs/digits/genotype.json
"""

import ml_collections

from dnas.spaces.darts.ops import PRIMITIVES


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Activations' dtype: "float32" or "bfloat16" (weights, alphas, BatchNorm statistics and
  # optimiser states stay float32).
  c.dtype = "float32"
  c.max_steps_per_epoch = 0  # 0: whole epochs; >0 caps steps per epoch (tests, smoke runs)
  c.data = dict(name="digits", data_dir="", train_portion=0.5, image_size=224, workers=0,
                crop_padding=1, flip=False)
  # Search: the DARTS supernet and bilevel optimiser (Liu et al. 2019, Sec. 3.1),
  # shrunk to 8x8 images. 3 cells: normal, reduction, reduction. a_lr is 10x the paper's:
  # 8 epochs give 72 architecture steps (CIFAR: ~19,500), too few for 3e-4 to move alpha.
  c.model = dict(C=8, layers=3, steps=4, multiplier=4, stem_multiplier=3,
                 primitives=PRIMITIVES, remat=False)
  c.search = dict(epochs=8, batch_size=64, order="first", w_lr=0.025, w_lr_min=0.001,
                  momentum=0.9, weight_decay=3e-4, grad_clip=5.0, a_lr=3e-3, a_b1=0.5,
                  a_b2=0.999, a_weight_decay=1e-3, fd_r=0.01)
  # Retraining the found cell from scratch (reference train.py, shrunk).
  c.train = dict(network="cifar", C=16, layers=5, epochs=60, batch_size=64, lr=0.025,
                 lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary=False,
                 auxiliary_weight=0.4, drop_path_prob=0.1, cutout=0, label_smoothing=0.0)
  # Devices of the data-parallel mesh (0: all) and how many of them shard large weights.
  c.mesh = dict(devices=0, fsdp=1)
  # Orbax checkpoints every N steps (0: epoch ends only) and at each epoch end; keep K.
  c.checkpoint = dict(every_steps=50, keep=3)
  return c
