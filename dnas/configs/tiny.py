"""Tiny digits config for tests and CI: seconds per epoch, small compiles.

python -m dnas.search --config=dnas/configs/tiny.py --workdir=/tmp/tiny
"""

from dnas.configs import digits


def get_config():
  c = digits.get_config()
  c.model.update(C=4, layers=2, steps=2, multiplier=2)
  c.search.update(epochs=1, batch_size=8)
  c.train.update(C=4, layers=2, epochs=1, batch_size=16)
  c.max_steps_per_epoch = 3
  return c
