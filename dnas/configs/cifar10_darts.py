"""DARTS on CIFAR-10 with the paper's hyperparameters (Liu et al. 2019, Sec. 3.1-3.2;
reference train_search.py and train.py).

python -m dnas.search --config=dnas/configs/cifar10_darts.py --workdir=runs/c10
python -m dnas.train --config=dnas/configs/cifar10_darts.py --genotype=runs/c10/genotype.json

Needs TFDS-prepared CIFAR-10 (`--config.data.data_dir`); without it, it stops with one
line naming the command that prepares it.
"""

from dnas.configs import base


def get_config():
  c = base.get_config()  # the base config holds the paper's search and retraining settings
  c.seed = 2
  c.data.update(name="cifar10", crop_padding=4, flip=True)
  # Without recomputation `order=second`'s HVP at batch 64 does not fit 24 GiB on CPU.
  c.search.update(hvp_remat=True)
  c.latency.update(batch_size=1)
  c.checkpoint.update(every_steps=100)
  return c
