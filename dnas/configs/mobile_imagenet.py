"""ProxylessNAS's ImageNet search in its mobile space, and the retraining of its finds.

python -m dnas.data.prepare imagenet2012 --data_dir=DIR --manual_dir=TARS
python -m dnas.search --config=dnas/configs/mobile_imagenet.py --config.data.data_dir=DIR
python -m dnas.train --config=dnas/configs/mobile_imagenet.py --genotype=proxyless_mobile \
    --config.data.data_dir=DIR                                      # a published network

Sources: mit-han-lab/proxylessnas search/imagenet_arch_search.py (search) and
search/imagenet_run_exp.py (retraining) argument defaults; deviations in BUILD_NOTES.md
("Mobile spaces").
"""

from dnas.configs import base


def get_config():
  c = base.get_config()
  c.space = "mobile"
  c.method = "proxyless"
  c.data.update(name="imagenet2012", image_size=224, flip=True,
                # 50,000 of ImageNet's 1,281,167 training images train the architecture.
                train_portion=1 - 50_000 / 1_281_167)
  c.mobile = dict(family="proxyless", width_mult=1.0, stem_stride=2, widths=(), depths=(),
                  strides=(), head=0, dropout=0.1)
  # 40 epochs of weights alone, then 120 with architecture steps; weights: SGD, Nesterov
  # momentum 0.9, lr 0.025 cosine, weight decay 4e-5, no clipping, batch 256;
  # architecture: Adam lr 1e-3, betas (0, 0.999), no weight decay.
  c.search.update(epochs=160, arch_start_epoch=40, batch_size=256, w_lr=0.025, w_lr_min=0.0,
                  momentum=0.9, nesterov=True, weight_decay=4e-5, grad_clip=0.0, a_lr=1e-3,
                  a_b1=0.0, a_b2=0.999, a_weight_decay=0.0)
  # Retraining: 300 epochs, SGD Nesterov lr 0.05 cosine, weight decay 4e-5, label
  # smoothing 0.1, batch 256, dropout 0.1 (mobile; 0.2 CPU, 0.3 GPU).
  c.train.update(epochs=300, batch_size=256, lr=0.05, lr_min=0.0, momentum=0.9, nesterov=True,
                 weight_decay=4e-5, grad_clip=0.0, label_smoothing=0.1, auxiliary=False,
                 drop_path_prob=0.0, cutout=0)
  c.latency.update(batch_size=1)
  return c
