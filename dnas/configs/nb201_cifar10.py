"""NAS-Bench-201's DARTS-V1 search on CIFAR-10 with the reference's settings (D-X-Y's
scripts-search/NAS-Bench-201-algos/DARTS-V1.sh and configs/nas-benchmark/algos/DARTS.config;
GDAS.sh: add --config.search.relaxation=gumbel --config.search.gumbel_hard=true
--config.search.epochs=250; BN=0). Needs the prepared TFDS CIFAR-10 (`python -m
dnas.data.prepare cifar10`). Both scripts take the weight step first (`search.step_order`).
Where dnas differs on purpose (clipping, the data split): BUILD_NOTES.md, "Deliberate
deviations".

python -m dnas.search --config=dnas/configs/nb201_cifar10.py --workdir=runs/nb201_c10
"""

from dnas.configs import nb201


def get_config():
  c = nb201.get_config()
  c.data.update(name="cifar10", crop_padding=4, flip=True)
  c.model.update(C=16, N=5)
  c.search.update(epochs=50, a_lr=3e-4, step_order="weight_first")
  # The benchmark's training: 200 epochs, batch 256.
  c.train.update(C=16, N=5, epochs=200, batch_size=256)
  return c
