"""Search methods as presets of composable parts: `config.method` names one, and
`build` turns it into what the bilevel step takes (`dnas.bilevel.make_search_steps`):
the relaxation that makes op weights from the architecture logits, additive terms of the
architecture loss, and the weight step's perturbation of the architecture weights. The
hypergradient (`search.order`), the latency objective and the selection rule compose
with every method.

  darts        DARTS (Liu et al. 2019): softmax (or `search.relaxation=gumbel`: GDAS)
  pc_darts     PC-DARTS (Xu et al. 2020): partial channels and edge normalisation, which
               the space builds into its supernet
  drnas        DrNAS (Chen et al. 2021): Dirichlet op weights (`dnas.methods.drnas`)
  beta_darts   beta-DARTS (Ye et al. 2022): the beta-decay regulariser
               (`dnas.methods.beta_darts`)
  sdarts_rs    SDARTS-RS (Chen & Hsieh 2020): the weight step on randomly perturbed op
               weights (`dnas.methods.sdarts`)
  sdarts_adv   SDARTS-ADV: on adversarially perturbed op weights
  darts_minus  DARTS- (Chu et al. 2021): an auxiliary skip on every edge whose weight
               decays over the search (`dnas.methods.darts_minus`)
  fair_darts   FairDARTS (Chu et al. 2020): sigmoid op weights and the zero-one loss
               (`dnas.methods.fair_darts`)
  proxyless    ProxylessNAS (Cai et al., ICLR 2019): binary gates on two sampled paths per
               architecture step, one per weight step (`dnas.arch.binary_gates`), the
               sampled logits rescaled after each update; the mobile space only
  spos         single-path one-shot (Guo et al., ECCV 2020; RANDOM-NAS, Li & Talwalkar,
               UAI 2019): weight steps only, each on one uniformly drawn path; the
               architecture is chosen afterwards by `search.selection=supernet`

Each method's own settings live in the config section of its name (`config.drnas`,
`config.beta_darts`, `config.sdarts`, `config.darts_minus`,
`config.fair_darts`).
"""

from collections.abc import Callable
from typing import NamedTuple

from dnas import optim, relaxation as relaxation_lib
from dnas.errors import ConfigError, flatten, non_negative, positive
from dnas.methods import beta_darts, darts_minus, drnas, fair_darts, robust_darts, sdarts
from dnas.methods.hooks import SearchHooks, SearchRun  # noqa: F401
from dnas.relaxation import relaxation_kind

METHODS = ("darts", "pc_darts", "drnas", "beta_darts", "sdarts_rs", "sdarts_adv",
           "darts_minus", "fair_darts", "spos", "proxyless")

_RELAXATION = relaxation_lib.METHOD_RELAXATION
# Methods without architecture steps: the weights train alone, the selection decides.
_NO_ARCH_STEPS = ("spos",)
# Methods defined on softmax op weights only.
_SOFTMAX_ONLY = ("sdarts_rs", "sdarts_adv")


class Parts(NamedTuple):
  """What a method adds to the bilevel step.

  relaxation: op weights per forward pass (`dnas.relaxation`).
  terms: additive architecture-loss terms `(alphas, step) -> (f32[], metrics)`.
  perturb: the weight step's architecture weights (`bilevel.make_phase_steps`), or None.
  a_weight_decay: the architecture optimiser's weight decay (None: search.a_weight_decay).
  a_transform: applied after the architecture optimiser's update, or None (ProxylessNAS's
    rescaling of the sampled logits, `optim.rescale_sampled_logits`).
  extra_inputs: step -> more keyword inputs of the supernet in every pass, or None.
  arch_steps: False for methods that never step the architecture (every step is the
    weight step, `make_search_steps`'s warm-up step).
  reports_arch_steps: the epoch's validation numbers are its architecture steps' on
    their sampled networks (GDAS's arch_top1), not the mixture's evaluation.
  """
  relaxation: relaxation_lib.Relaxation
  terms: tuple[Callable, ...] = ()
  perturb: Callable | None = None
  a_weight_decay: float | None = None
  a_transform: object = None
  extra_inputs: Callable | None = None
  arch_steps: bool = True
  reports_arch_steps: bool = False


def validate(config) -> None:
  """One ConfigError line per mistake in `method` or its settings."""
  method = config.method
  if method not in METHODS:
    raise ConfigError(f"method {method!r} is unknown; valid: {', '.join(METHODS)}")
  own = _RELAXATION.get(method)
  if own and config.search.relaxation not in ("softmax", own):
    raise ConfigError(f"method {method} draws its op weights from a {own} relaxation; "
                      f"search.relaxation must stay softmax (the default) or be {own}, got "
                      f"{config.search.relaxation!r}")
  if method in _SOFTMAX_ONLY and config.search.relaxation != "softmax":
    raise ConfigError(f"method {method} perturbs softmax op weights; search.relaxation "
                      f"must be softmax, got {config.search.relaxation!r}")
  if config.search.relaxation == "binary" and method != "proxyless":
    raise ConfigError(f"search.relaxation binary is method proxyless's binary gates, got "
                      f"method {method}")
  if method == "proxyless" and config.search.order != "first":
    raise ConfigError(f"method proxyless estimates the architecture gradient at the current "
                      f"weights (first order); search.order must be first, got "
                      f"{config.search.order!r}")
  if config.search.relaxation == "uniform" and method not in _NO_ARCH_STEPS:
    raise ConfigError(f"search.relaxation uniform draws paths that ignore the architecture "
                      f"weights: it is method spos's, got method {method}")
  if method in _NO_ARCH_STEPS:
    if config.search.selection != "supernet":
      raise ConfigError(f"method {method} trains no architecture weights: it chooses with "
                        f"search.selection=supernet, got {config.search.selection!r}")
    if config.latency.objective != "none":
      raise ConfigError(f"method {method} takes no architecture steps, so no latency "
                        f"objective (got {config.latency.objective!r}); bound the latency "
                        f"with latency.limit_ms")
    if config.search.hessian_every:
      raise ConfigError(f"method {method} trains no architecture weights: "
                        f"search.hessian_every must be 0, got {config.search.hessian_every}")
  c = flatten(config)
  if method == "drnas":
    if config.drnas.reg not in drnas.REGULARISERS:
      raise ConfigError(f"drnas.reg {config.drnas.reg!r} is unknown; valid: "
                        f"{', '.join(drnas.REGULARISERS)}")
    non_negative(c, "drnas.kl_scale")
    drnas.validate_stages(config)
  elif config.drnas.stage_epochs:
    raise ConfigError(f"drnas.stage_epochs is DrNAS's progressive learning; it needs "
                      f"method drnas, got method {method}")
  if method == "beta_darts":
    non_negative(c, "beta_darts.lambda_max")
  if method == "fair_darts":
    non_negative(c, "fair_darts.zero_one_weight")
    if not 0 < config.fair_darts.threshold < 1:
      raise ConfigError(f"fair_darts.threshold must be in (0, 1), got "
                        f"{config.fair_darts.threshold!r}")
  if method == "darts_minus":
    non_negative(c, "darts_minus.beta")
    if config.darts_minus.decay not in darts_minus.DECAYS:
      raise ConfigError(f"darts_minus.decay {config.darts_minus.decay!r} is unknown; valid: "
                        f"{', '.join(darts_minus.DECAYS)}")
  if method in _SOFTMAX_ONLY:
    for k in ("sdarts.epsilon", "sdarts.epsilon_min"):
      non_negative(c, k)
    positive(c, "sdarts.steps", int)


def build(config, steps_per_epoch: int) -> Parts:
  """The parts of `config.method` for a search of `steps_per_epoch` steps per epoch."""
  parts = _build(config, steps_per_epoch)
  # GDAS reports the architecture steps' sampled networks on the validation split (its
  # search_func's arch_top1): the softmax mixture, which it never trains, is evaluated
  # only in epochs without architecture steps (and for the second order, whose
  # architecture steps see virtual weights).
  return parts._replace(reports_arch_steps=relaxation_kind(config) == "gumbel"
                        and config.search.order == "first")


def supernet_options(config) -> dict:
  """What `config.method` decides about the supernet, as entries of the space's section
  (`dnas.config.space_section`): the relaxation its forward passes mix with, Gumbel's
  straight-through `gumbel_hard`, PC-DARTS's partial channels and edge normalisation
  (partial channels alone: `model.partial_channels`, DrNAS's), DARTS-'s auxiliary skip,
  and FairDARTS's threshold on a chosen op's sigmoid weight (None for other methods)."""
  method = config.method
  return dict(relaxation=relaxation_kind(config), gumbel_hard=bool(config.search.gumbel_hard),
              partial_channels=method == "pc_darts" or bool(
                  config.model.get("partial_channels", False)),
              edge_normalization=method == "pc_darts",
              auxiliary_skip=method == "darts_minus",
              fair_threshold=(float(config.fair_darts.threshold) if method == "fair_darts"
                              else None))


def hooks(config) -> list[SearchHooks]:
  """The search hooks of `config`'s method and settings (`dnas.methods.hooks`)."""
  out = []
  if config.search.hessian_every:
    out.append(robust_darts.RobustDartsHooks())
  if config.method == "drnas" and config.drnas.stage_epochs:
    out.append(drnas.StageHooks())
  return out


def _build(config, steps_per_epoch: int) -> Parts:
  s = config.search
  kind = relaxation_kind(config)
  if kind == "gumbel":
    relax = relaxation_lib.gumbel(optim.per_epoch_anneal(
        s.tau_start, s.tau_end, s.epochs, steps_per_epoch, s.tau_anneal))
  else:
    relax = relaxation_lib.Relaxation(kind)
  if config.method == "drnas" and config.drnas.reg == "kl":
    return Parts(relax, (drnas.kl_term(config.drnas.kl_scale),), a_weight_decay=0.0)
  if config.method == "beta_darts":
    return Parts(relax, (beta_darts.beta_term(config.beta_darts.lambda_max, s.epochs,
                                              steps_per_epoch),))
  if config.method in _SOFTMAX_ONLY:
    d = config.sdarts
    return Parts(relax, perturb=sdarts.make_perturb(
        "random" if config.method == "sdarts_rs" else "adversarial", epsilon=d.epsilon,
        epsilon_min=d.epsilon_min, epochs=s.epochs, steps_per_epoch=steps_per_epoch,
        steps=d.steps))
  if config.method == "proxyless":
    return Parts(relax, a_transform=optim.rescale_sampled_logits())
  if config.method == "fair_darts":
    return Parts(relax, (fair_darts.zero_one_term(config.fair_darts.zero_one_weight),))
  if config.method == "darts_minus":
    d = config.darts_minus
    return Parts(relax, extra_inputs=darts_minus.make_inputs(
        beta=d.beta, decay=d.decay, epochs=s.epochs, steps_per_epoch=steps_per_epoch))
  return Parts(relax, arch_steps=config.method not in _NO_ARCH_STEPS)
