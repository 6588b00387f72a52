"""PC-DARTS on CIFAR-10 with the paper's hyperparameters (Xu et al., ICLR 2020, Sec. 4.1;
reference yuhuixu1993/PC-DARTS train_search.py and train.py).

python -m dnas.search --config=dnas/configs/cifar10_pc_darts.py --config.data.data_dir=$HOME/tfds --workdir=runs/pc10
python -m dnas.train --config=dnas/configs/cifar10_pc_darts.py --genotype=runs/pc10/genotype.json

Search: partial channels K=4 with channel shuffle, edge normalisation, batch 256, weight
SGD lr 0.1 annealed to 0, Adam on the architecture at lr 6e-4, architecture updates from
epoch 15 of 50 (first order). Retraining as DARTS, but drop path 0.3.
"""

from dnas.configs import cifar10_darts


def get_config():
  c = cifar10_darts.get_config()
  c.method = "pc_darts"
  c.model.pc_k = 4
  c.search.update(batch_size=256, w_lr=0.1, w_lr_min=0.0, a_lr=6e-4, arch_start_epoch=15)
  c.train.update(drop_path_prob=0.3)
  return c
