"""NAS-Bench-201 (Dong & Yang, ICLR 2020) on the embedded digits set (no download): the
benchmark's supernet and search settings (D-X-Y's scripts: DARTS-V1 and GDAS on
`nas-bench-201`, configs/nas-benchmark/algos/DARTS.config), shrunk to 8x8 images.

python -m dnas.search --config=dnas/configs/nb201.py --workdir=runs/nb201
python -m dnas.search --config=dnas/configs/nb201.py --config.search.order=second
python -m dnas.search --config=dnas/configs/nb201.py --config.search.relaxation=gumbel \
    --config.search.gumbel_hard=true                                     # GDAS
python -m dnas.search --config=dnas/configs/nb201.py --config.method=spos \
    --config.search.selection=supernet --config.search.epochs=250     # RANDOM-NAS
python -m dnas.train --config=dnas/configs/nb201.py --genotype=runs/nb201/genotype.json

`nb201_cifar10.py` holds the reference's CIFAR-10 settings.
"""

from dnas.configs import base
from dnas.spaces.nb201.ops import NAS_BENCH_201


def get_config():
  c = base.get_config()
  c.space = "nb201"
  # The supernet: C channels in the first of three stages of N search cells (the
  # benchmark: C=16, N=5); its cells search with affine-free BatchNorm that keeps no
  # running statistics (the reference's scripts take BN=0/1; their documented runs,
  # `DARTS-V1.sh cifar10 0 -1` and `GDAS.sh cifar10 0 -1`, use BN=0).
  c.model = dict(C=8, N=1, primitives=NAS_BENCH_201, affine=False, track_running_stats=False,
                 remat=False)
  # The reference: SGD with Nesterov momentum 0.9, lr 0.025 cosine to 0.001, weight decay
  # 5e-4, gradient clipping at 5, batch 64; Adam 3e-4 (betas 0.5, 0.999, decay 1e-3) for
  # the architecture; 50 epochs for DARTS (100 for DrNAS, beta-DARTS, SDARTS), 250 for
  # GDAS with tau from 10 to 0.1. Here 50 epochs for every method: an epoch of the
  # digits' search split is 7 steps (a CIFAR one 391), so a_lr is 10x, as in the DARTS
  # digits default. With 10 epochs the supernet reached 65 % validation accuracy and
  # the alphas did not move (BUILD_NOTES.md, "Design decisions"); with 50, 98 %.
  c.search.update(epochs=50, batch_size=64, w_lr=0.025, w_lr_min=0.001, momentum=0.9,
                  nesterov=True, weight_decay=5e-4, grad_clip=5.0, a_lr=3e-3, a_b1=0.5,
                  a_b2=0.999, a_weight_decay=1e-3, tau_start=10.0, tau_end=0.1)
  # Retraining a TinyNetwork (the benchmark: C=16, N=5, 200 epochs, batch 256, SGD with
  # Nesterov momentum, lr 0.1 cosine to 0, weight decay 5e-4, no clipping), shrunk.
  c.train = dict(network="tiny", C=16, N=2, epochs=30, batch_size=64, lr=0.1, lr_min=0.0,
                 momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=0.0,
                 auxiliary=False, auxiliary_weight=0.0, drop_path_prob=0.0, cutout=0,
                 label_smoothing=0.0)
  # NAS-Bench-201's own table (the NATS-Bench topology file, read with the optional
  # `nats_bench` package): each epoch's architecture is looked up and its 200-epoch test
  # accuracies on CIFAR-10, CIFAR-100 and ImageNet16-120 are logged. Empty: none.
  # `latency_networks`: how many random TinyNetworks `python -m dnas.latency profile` times
  # here to fit the space's cell latency model (dnas.spaces.nb201.latency).
  c.nb201 = dict(benchmark="", latency_networks=100)
  return c
