"""ProxylessNAS's space and method on the embedded digits set (no download).

python -m dnas.search --config=dnas/configs/mobile_digits.py --workdir=runs/mobile
python -m dnas.train --config=dnas/configs/mobile_digits.py --genotype=runs/mobile/genotype.json
python -m dnas.search --config=dnas/configs/mobile_digits.py --config.mobile.family=fbnet \
    --config.method=darts --config.search.relaxation=gumbel        # FBNet's space and search
"""

from dnas.configs import base


def get_config():
  c = base.get_config()
  c.space = "mobile"
  # ProxylessNAS's binary gates (Cai et al., ICLR 2019): two sampled paths per architecture
  # step, one per weight step. `--config.method=darts` mixes every candidate (softmax).
  c.method = "proxyless"
  # The mobile space shrunk to 8x8 images: ProxylessNAS's blocks and candidates (6 MBConvs,
  # zero where a block has a shortcut), its stem and fixed first block at a quarter width,
  # 6 searchable layers in 3 stages (8x8, 4x4, 2x2). `mobile.family=fbnet`: FBNet's 9.
  c.mobile = dict(family="proxyless", width_mult=0.5, stem_stride=1, widths=(16, 24, 32),
                  depths=(2, 2, 2), strides=(1, 2, 2), head=256, dropout=0.0)
  # ProxylessNAS's optimisers (search/imagenet_arch_search.py): weights SGD with Nesterov
  # momentum, weight decay 4e-5, no clipping; architecture Adam with b1 = 0, no weight
  # decay (the sampled-logit rescaling needs updates of 0 where the gradient is 0). As
  # there, the weights train alone first (a quarter of the epochs; single paths learn
  # slowly: one of 6-7 ops per layer and step). The architecture lr is 10x ProxylessNAS's:
  # 270 architecture steps here, ~60,000 there.
  c.search.update(epochs=40, arch_start_epoch=10, batch_size=64, w_lr=0.05, nesterov=True,
                  weight_decay=4e-5, grad_clip=0.0, a_lr=1e-2, a_b1=0.0, a_b2=0.999,
                  a_weight_decay=0.0)
  # Retraining the found network from scratch.
  c.train.update(epochs=30, batch_size=64, lr=0.05, nesterov=True, weight_decay=4e-5,
                 grad_clip=0.0, auxiliary=False, drop_path_prob=0.0, cutout=0)
  return c
