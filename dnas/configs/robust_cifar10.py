"""The robust methods' CIFAR-10 searches with their official code's settings, one command
each on a GPU (`--config=dnas/configs/robust_cifar10.py:METHOD[,nb201]`):

python -m dnas.search --config=dnas/configs/robust_cifar10.py:drnas,nb201 --workdir=runs/drnas201
python -m dnas.search --config=dnas/configs/robust_cifar10.py:beta_darts,nb201
python -m dnas.search --config=dnas/configs/robust_cifar10.py:sdarts_adv          # DARTS space
python -m dnas.search --config=dnas/configs/robust_cifar10.py:darts_minus
python -m dnas.search --config=dnas/configs/robust_cifar10.py:fair_darts
python -m dnas.search --config=dnas/configs/robust_cifar10.py:darts_pt,nb201     # DARTS + PT
python -m dnas.search --config=dnas/configs/robust_cifar10.py:darts_pt           # DARTS space

METHOD: drnas, beta_darts, sdarts_rs, sdarts_adv, darts_minus, fair_darts, darts_pt;
",nb201" searches NAS-Bench-201's space (C=16, N=5), otherwise the DARTS space (C=16, 8
cells). Needs the prepared TFDS CIFAR-10 (`python -m dnas.data.prepare cifar10`).

Sources (what each repository's scripts set):
- NAS-Bench-201, every method: the 50/50 split of CIFAR-10's training set, batch 64,
  weights SGD lr 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, clipping 5;
  alphas Adam 3e-4, betas (0.5, 0.999), weight decay 1e-3; 100 epochs (DrNAS
  201-space/train_search.py, Beta-DARTS nasbench201/train_search.py, SmoothDARTS
  nasbench201, darts-pt exp_scripts/darts-201.sh).
- DARTS space: SDARTS and DARTS- search the DARTS setting (50 epochs, C=16, 8 cells);
  FairDARTS: batch 128, lr 0.005 to 0.001, alphas Adam 3e-3 with betas (0.9, 0.999),
  no `none` op. beta-DARTS's released code runs NAS-Bench-201 only; its DARTS-space
  search here takes DARTS's settings with the NAS-Bench-201 lambda. DrNAS's DARTS-space
  search (DARTS-space/train_search.py) runs on the 20-cell C=36 network with partial
  channels (1/6 of them, no edge normalisation), no `none` op, SGD lr 0.1 cosine to 0,
  alphas Adam 6e-4, first order, 25 + 25 epochs, each stage's first 10 weight-only;
  between its two stages it prunes each edge to 4 ops and widens the partial channels to
  1/4 (Net2Wider): `drnas.stage_*`.
"""

from dnas.configs import cifar10_darts, nb201_cifar10

METHODS = ("drnas", "beta_darts", "sdarts_rs", "sdarts_adv", "darts_minus", "fair_darts",
           "darts_pt")
NO_NONE = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
           "dil_conv_3x3", "dil_conv_5x5")


def get_config(arg: str = "drnas,nb201"):
  method, _, space = arg.partition(",")
  if method not in METHODS or space not in ("", "nb201"):
    raise ValueError(f"robust_cifar10.py:{arg}: expected METHOD[,nb201] with METHOD one of "
                     f"{', '.join(METHODS)}")
  if space == "nb201":
    c = nb201_cifar10.get_config()
    # Their scripts step the architecture first (DARTS's order, not DARTS-V1's).
    c.search.update(epochs=100, nesterov=False, weight_decay=3e-4, grad_clip=5.0,
                    step_order="arch_first")
  else:
    c = cifar10_darts.get_config()
  c.method = "darts" if method == "darts_pt" else method
  if method == "darts_pt":
    c.search.selection = "pt"
  if method == "drnas" and space != "nb201":
    c.model.update(C=36, layers=20, primitives=NO_NONE, partial_channels=True, pc_k=6)
    c.search.update(w_lr=0.1, w_lr_min=0.0, a_lr=6e-4, arch_start_epoch=10)
    c.drnas.update(stage_epochs=(25, 25), stage_k=(6, 4), stage_keep=(7, 4))
  if method == "fair_darts" and space != "nb201":  # FairDARTS has no NAS-Bench-201 code
    c.model.primitives = NO_NONE
    c.search.update(batch_size=128, w_lr=0.005, w_lr_min=0.001, a_lr=3e-3, a_b1=0.9)
  return c
