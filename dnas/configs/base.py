"""The config schema every dnas config starts from: every field the loops read exists here,
with its meaning; the other configs import it and change values (`digits.py`, the
default, sets the DARTS space at digits size).

python -m dnas.search --config=dnas/configs/digits.py --config.search.epochs=3
"""

import ml_collections

from dnas.spaces.darts.ops import PRIMITIVES


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The search space (`dnas.spaces.get`): "darts", or one a config file registers.
  c.space = "darts"
  # Activations' dtype: "float32" or "bfloat16" (weights, alphas, BatchNorm statistics and
  # optimiser states stay float32).
  c.dtype = "float32"
  # GPU: XLA's deterministic ops (`--xla_gpu_deterministic_ops`), so that a resumed run
  # is bitwise the uninterrupted one there too (slower scatters and reductions). CPU and
  # TPU runs are deterministic already.
  c.deterministic = False
  # The search method (`dnas.methods`): "darts"; "pc_darts" (Xu et al. 2020: each edge
  # mixes 1/model.pc_k of the channels, edge-normalisation weights beta decide the
  # edges); "drnas" (Dirichlet op weights); "beta_darts" (the beta-decay regulariser);
  # "sdarts_rs", "sdarts_adv" (the weight step on perturbed op weights); "darts_minus"
  # (a decaying auxiliary skip on every edge); "fair_darts" (sigmoid op weights, the
  # zero-one loss).
  c.method = "darts"
  c.max_steps_per_epoch = 0  # 0: whole epochs; >0 caps steps per epoch (tests, smoke runs)
  # data.name: "digits" (embedded), a TFDS set prepared in data_dir ("cifar10", "cifar100",
  # "imagenet2012", "imagenette"), or your own images: "folder" (data_dir/train/<class>/
  # images, optionally data_dir/test/<class>/) or "npz" (data_dir: a file with x_train,
  # y_train[, x_test, y_test]); `dnas.data.own`. image_size: the side of ImageNet crops,
  # and of own images when a folder tree holds several sizes.
  # data.workers: Grain worker processes reading and augmenting (0: in the main process;
  # -1: none on a CPU backend, half the cores (at most 8) on a GPU/TPU host).
  c.data = dict(name="digits", data_dir="", train_portion=0.5, image_size=224, workers=-1,
                crop_padding=1, flip=False)
  # The supernet (DARTS: Liu et al. 2019, Sec. 3.1), read by the space. partial_channels:
  # every edge of the DARTS space mixes 1/pc_k of the channels with any method, without
  # edge normalisation (DrNAS's DARTS-space supernet); method pc_darts implies both.
  # op_mask: None, or {"normal": E x K, "reduce": E x K} booleans, the ops each edge
  # still chooses from (what DrNAS's progressive stages set between stages).
  # scan_edges: a DARTS search cell's identical edges run as one lax.scan (compiled
  # once: XLA compiles CIFAR-10's first-order step 2.8x faster, at an equal step time);
  # False: the loop over nodes.
  c.model = dict(C=16, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 primitives=PRIMITIVES, remat=False, pc_k=4, partial_channels=False,
                 op_mask=None, scan_edges=True)
  # The bilevel search. Weights: SGD (w_lr annealed per epoch by cosine to w_lr_min,
  # momentum (nesterov: PyTorch's Nesterov form), weight_decay, grad_clip); architecture:
  # Adam (a_lr, a_b1, a_b2, a_weight_decay). order: "first", "second" (exact),
  # "second_fd" (DARTS Eq. 8 with fd_r); hvp_remat: `order=second`'s Hessian-vector
  # product recomputes cell activations. arch_start_epoch: weight-only epochs first (PC-DARTS: 15).
  # programs: "one" jitted program per step; "split" into a few that share one gradient
  # program (first order: about 40 % less compile time on CPU, slower architecture
  # steps); "auto": split for the second-order methods only.
  # relaxation: "softmax" (DARTS), "gumbel" (FBNet, GDAS: op weights sampled with a
  # temperature annealed per epoch from tau_start to tau_end, "linear" or "exponential";
  # gumbel_hard: straight-through one-hot, each edge runs only its sampled op),
  # "dirichlet" (DrNAS's samples; method=drnas sets it) or "sigmoid" (FairDARTS's
  # independent op weights).
  # selection: how the trained supernet becomes the architecture (`dnas.selection`):
  # "argmax" of the architecture weights (DARTS); "pt": DARTS-PT's perturbation-based
  # projection (DARTS and NAS-Bench-201 spaces; `darts_pt.interval`); "supernet": the
  # candidate the trained supernet scores best on the validation split as a single path
  # (SPOS, RANDOM-NAS; NAS-Bench-201), among select_num drawn uniformly from the space's
  # architectures within latency.limit_ms (0: all of them; RANDOM-NAS draws 100).
  # hessian_every: every N epochs, log the largest eigenvalue of the Hessian in alpha of
  # the loss on one architecture batch (RobustDARTS; Lanczos with hessian_iters
  # Hessian-vector products; 0: never); early_stop: DARTS-ES on that signal
  # (`robust_darts`), the search stops and takes the architecture of the epoch before
  # the rise; ada: DARTS-ADA, the search goes back to that epoch instead and goes on
  # with a larger weight decay. step_order: "arch_first" (DARTS's train_search,
  # NAS-Bench-201's DARTS-V2) or "weight_first" (NAS-Bench-201's DARTS-V1 and GDAS: the
  # architecture step at the just-updated weights).
  c.search = dict(epochs=50, batch_size=64, order="first", w_lr=0.025, w_lr_min=0.001,
                  momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, a_lr=3e-4,
                  a_b1=0.5, a_b2=0.999, a_weight_decay=1e-3, fd_r=0.01, arch_start_epoch=0,
                  relaxation="softmax", gumbel_hard=False, tau_start=10.0, tau_end=0.1,
                  tau_anneal="linear", hvp_remat=False, programs="auto",
                  selection="argmax", hessian_every=0, hessian_iters=20, early_stop=False,
                  ada=False, step_order="arch_first", select_num=100)
  # RobustDARTS (automl/RobustDARTS, its search defaults): DARTS-ES compares the local
  # average of the last `window` eigenvalues with the one `delta` measurements earlier and
  # fires above `factor` from `es_start_epoch` on; DARTS-ADA then multiplies the weight
  # decay by `mul_factor`, as long as it stays <= `max_weight_decay` (3e-4 -> 243e-4:
  # four rollbacks), and runs on from the epoch it went back to.
  c.robust_darts = dict(window=5, delta=4, factor=1.3, es_start_epoch=10, mul_factor=3.0,
                        max_weight_decay=243e-4)
  # DrNAS (xiangning-chen/DrNAS): reg "l2" (the official default: search.a_weight_decay
  # on alpha) or "kl" (kl_scale * KL(Dir(ELU(alpha) + 1) || Dir(1)) per edge added to the
  # architecture loss, architecture weight decay 0). Progressive learning (DARTS space,
  # partial channels): stage_epochs (summing to search.epochs; empty: one stage), and per
  # stage the partial-channel k (stage_k[0] = model.pc_k) and the ops kept per edge
  # (stage_keep[0] = all); between stages each edge is pruned to its strongest ops and the
  # edges widened to 1/k of the channels; search.arch_start_epoch counts from each
  # stage's start (the official: 25 + 25 epochs, k 6 -> 4, 7 -> 4 ops, 10 warm-up epochs).
  c.drnas = dict(reg="l2", kl_scale=1e-3, stage_epochs=(), stage_k=(), stage_keep=())
  # beta-DARTS (Sunshine-Ye/Beta-DARTS): lambda(epoch) = lambda_max * epoch / epochs times
  # the beta-decay loss (the official NAS-Bench-201 run: 50).
  c.beta_darts = dict(lambda_max=50.0)
  # SDARTS (xiangning-chen/SmoothDARTS): the perturbation's radius grows by epoch from
  # epsilon_min to epsilon; ADV takes `steps` projected-gradient steps of 2 epsilon / steps.
  c.sdarts = dict(epsilon=0.3, epsilon_min=0.03, steps=7)
  # DARTS- (Meituan-AutoML/DARTS-): the auxiliary skip's weight, beta at the first epoch,
  # decaying "linear" (the official run) or "cosine" towards 0 over the search.
  c.darts_minus = dict(beta=1.0, decay="linear")
  # FairDARTS (xiaomi-automl/FairDARTS): the zero-one loss's weight, and the sigmoid weight
  # an op of the derived cell should reach (reported: dnas's cells keep two edges a node).
  c.fair_darts = dict(zero_one_weight=10.0, threshold=0.85)
  # DARTS-PT's selection (search.selection = "pt"; ruocwang/darts-pt): weight epochs of
  # fine-tuning between two edge decisions (the official proj_intv).
  c.darts_pt = dict(interval=5)
  # Retraining the found architecture from scratch (reference train.py).
  c.train = dict(network="cifar", C=36, layers=20, epochs=600, batch_size=96, lr=0.025,
                 lr_min=0.0, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0,
                 auxiliary=True, auxiliary_weight=0.4, drop_path_prob=0.2, cutout=16,
                 label_smoothing=0.0)
  # Latency-aware search (FBNet, ProxylessNAS): objective "none" (default), "fbnet"
  # (ce * fbnet_alpha * log(ms) ** fbnet_beta), "proxyless" (ce + weight * ms) or "target"
  # (ce + weight * max(0, ms / target_ms - 1)). `table`: a JSON latency table (README);
  # empty: measure one on this device at the start of the search (written to the work
  # directory). The table is for the final network of `train.*` at `batch_size`.
  # estimate: the ms the objective sees, "expected" (E[LAT] of the mixture: FBNet Eq. 4,
  # ProxylessNAS Eq. 5) or "derived" (the derived architecture's predicted latency with the
  # expectation's gradient, straight through; DARTS and NAS-Bench-201 spaces): with
  # "target", the budget then binds the architecture the search returns, not the mixture.
  # limit_ms > 0: a hard limit on the found architecture's predicted latency, which the
  # selection enforces (argmax: the most probable architecture within it; supernet: the
  # best scored within it; NAS-Bench-201, whose architectures can all be enumerated).
  c.latency = dict(objective="none", table="", weight=0.0, fbnet_alpha=0.2, fbnet_beta=0.6,
                   target_ms=0.0, batch_size=64, repeats=50, allow_foreign_table=False,
                   estimate="expected", limit_ms=0.0)
  # Devices of the data-parallel mesh (0: all) and how many of them shard large weights.
  c.mesh = dict(devices=0, fsdp=1)
  # Orbax checkpoints every N steps (0: epoch ends only) and at each epoch end; keep K.
  c.checkpoint = dict(every_steps=50, keep=3)
  return c
