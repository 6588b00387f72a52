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
  c.max_steps_per_epoch = 0
  c.data = dict(name="cifar10", data_dir="", train_portion=0.5, image_size=224, workers=0,
                crop_padding=4, flip=True)
  c.model = dict(C=16, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 primitives=PRIMITIVES, remat=False)
  c.search = dict(epochs=50, batch_size=64, order="first", w_lr=0.025, w_lr_min=0.001,
                  momentum=0.9, weight_decay=3e-4, grad_clip=5.0, a_lr=3e-4, a_b1=0.5,
                  a_b2=0.999, a_weight_decay=1e-3, fd_r=0.01)
  c.train = dict(network="cifar", C=36, layers=20, epochs=600, batch_size=96, lr=0.025,
                 lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary=True,
                 auxiliary_weight=0.4, drop_path_prob=0.2, cutout=16, label_smoothing=0.0)
  # Devices of the data-parallel mesh (0: all) and how many of them shard large weights.
  c.mesh = dict(devices=0, fsdp=1)
  c.checkpoint = dict(every_steps=100, keep=3)
  return c
