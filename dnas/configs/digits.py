"""Default: beta-DARTS search and retraining on the embedded digits set (no download).

python -m dnas.search --workdir=runs/digits
python -m dnas.train --genotype=runs/digits/genotype.json
"""

from dnas.configs import base


def get_config():
  c = base.get_config()
  # The DARTS supernet and bilevel optimiser (Liu et al. 2019, Sec. 3.1), shrunk to 8x8
  # images. 5 cells, as the retrained network: normal, reduction, normal, reduction,
  # normal (the 3-cell supernet, normal-reduction-reduction, gave two thirds of its cells
  # to reductions, whose alphas collapsed onto pooling: BUILD_NOTES.md, "Default search
  # and retrain").
  # a_lr is 10x the paper's: 8 epochs give 72 architecture steps (CIFAR: ~19,500), too
  # few for 3e-4 to move alpha.
  c.model.update(C=8, layers=5)
  c.search.update(epochs=8, a_lr=3e-3)
  # The method: beta-DARTS (Ye et al., CVPR 2022): the best mean of the methods on the
  # NAS-Bench-201 digits ground truth, and on this space cells with fewer parameter-free
  # ops than DARTS, whose default here collapsed onto pooling (BUILD_NOTES.md, "Search
  # quality on the NAS-Bench-201 digits ground truth"). `--config.method=darts` is plain
  # DARTS.
  c.method = "beta_darts"
  # Retraining the found cell from scratch (reference train.py, shrunk).
  c.train.update(C=16, layers=5, epochs=60, batch_size=64, auxiliary=False,
                 drop_path_prob=0.1, cutout=0)
  return c
