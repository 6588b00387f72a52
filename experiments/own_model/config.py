"""A researcher's own model searched by `python -m dnas.search`: the generic MixedOp space
(`dnas.spaces.mixed_op`) over `model.OwnNet`, registered here as space "own_model".

python -m dnas.search --config=experiments/own_model/config.py --workdir=runs/own
python -m dnas.search --config=experiments/own_model/config.py --workdir=runs/own_lat \
    --config.latency.objective=proxyless --config.latency.weight=0.5
python -m dnas.train --config=experiments/own_model/config.py --genotype=runs/own/genotype.json
"""

from dnas import spaces
from dnas.configs import base
from dnas.spaces.mixed_op import MixedOpSpace
from experiments.own_model.model import CANDIDATES, OwnNet


def build(model, info, rngs):
  """The searched network for the space's section `model` (`config.model`) and a
  `DatasetInfo`: OwnNet at `model.width`."""
  m = model
  return OwnNet(width=m.width, blocks=m.blocks, classes=info.num_classes,
                in_channels=info.image_shape[-1], ops=tuple(m.ops), rngs=rngs)


SPACE = spaces.register(MixedOpSpace("own_model", build,
                                     op_names=lambda model, path: tuple(model.ops)))


def get_config():
  c = base.get_config()
  c.space = "own_model"
  c.model = dict(width=16, blocks=2, ops=tuple(CANDIDATES))
  # 10 epochs of 14 steps, first order; Adam at 10x the DARTS rate, as the digits default.
  c.search.update(epochs=10, a_lr=3e-3)
  # Retraining the discretised network from scratch: SGD, cosine from 0.05 to 0.
  c.train.update(epochs=30, batch_size=64, lr=0.05, auxiliary=False, drop_path_prob=0.0,
                 cutout=0)
  c.latency.update(repeats=30)
  return c
