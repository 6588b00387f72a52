"""Config validation (every user mistake becomes one ConfigError line, before compiling)
and the search space's section of a config (`space_section`)."""

import ml_collections

from dnas import execution, hypergrad, latency, methods, selection, spaces, utils
from dnas.arch import RELAXATIONS
from dnas.data.pipeline import DATASETS
from dnas.errors import ConfigError, flatten, non_negative, positive  # noqa: F401  (re-exported)
from dnas.methods import robust_darts



def space_section(config) -> ml_collections.ConfigDict:
  """The part of `config` that its search space reads: `config.model`, the space's own
  section if the config has one (`config.<space name>`, e.g. `nb201.benchmark`), and what
  the method decides about the supernet (`methods.supernet_options`: relaxation,
  gumbel_hard, partial_channels, edge_normalization, auxiliary_skip, fair_threshold).
  The final network's settings are `config.train`."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  own = config.get(config.space)
  with model.ignore_type():
    if own is not None and hasattr(own, "items"):
      model.update(own.to_dict())
    model.update(methods.supernet_options(config))
  return model


def validate(config, mode: str) -> None:
  """Checks the parts of `config` that `mode` ("search" or "train") uses."""
  c = flatten(config)
  if c["space"] not in spaces.names():
    raise ConfigError(f"space {c['space']!r} is unknown; valid: {', '.join(spaces.names())}")
  if c["data.name"] not in DATASETS:
    raise ConfigError(f"data.name {c['data.name']!r} is unknown; available: {', '.join(DATASETS)}")
  if not 0 < c["data.train_portion"] < 1:
    raise ConfigError(f"data.train_portion must be in (0, 1), got {c['data.train_portion']!r}")
  non_negative(c, "data.crop_padding")
  non_negative(c, "max_steps_per_epoch")
  non_negative(c, "checkpoint.every_steps")
  if isinstance(c["data.workers"], bool) or not isinstance(c["data.workers"], int) or c["data.workers"] < -1:
    raise ConfigError(f"data.workers must be an integer >= -1 (-1: chosen for this host), got "
                      f"{c['data.workers']!r}")
  positive(c, "data.image_size", int)
  non_negative(c, "mesh.devices")
  positive(c, "mesh.fsdp", int)
  positive(c, "checkpoint.keep", int)
  if c["dtype"] not in utils.DTYPES:
    raise ConfigError(f"dtype {c['dtype']!r} is unknown; valid: {', '.join(utils.DTYPES)}")
  if mode == "search":
    for k in ("search.epochs", "search.batch_size"):
      positive(c, k, int)
    for k in ("search.w_lr", "search.a_lr", "search.fd_r"):
      positive(c, k)
    for k in ("search.w_lr_min", "search.momentum", "search.weight_decay", "search.grad_clip",
              "search.a_weight_decay"):
      non_negative(c, k)
    if c["search.w_lr_min"] > c["search.w_lr"]:
      raise ConfigError(f"search.w_lr_min ({c['search.w_lr_min']}) must be <= search.w_lr "
                        f"({c['search.w_lr']})")
    for k in ("search.a_b1", "search.a_b2"):
      if not 0 <= c[k] < 1:
        raise ConfigError(f"{k} must be in [0, 1), got {c[k]!r}")
    if c["search.order"] not in hypergrad.ORDERS:
      raise ConfigError(f"search.order {c['search.order']!r} is unknown; valid: "
                        f"{', '.join(hypergrad.ORDERS)}")
    if c["search.programs"] not in execution.PROGRAMS:
      raise ConfigError(f"search.programs {c['search.programs']!r} is unknown; valid: "
                        f"{', '.join(execution.PROGRAMS)}")
    if c["search.selection"] not in selection.SELECTIONS:
      raise ConfigError(f"search.selection {c['search.selection']!r} is unknown; valid: "
                        f"{', '.join(selection.SELECTIONS)}")
    methods.validate(config)
    if c["search.selection"] == "pt":
      positive(c, "darts_pt.interval", int)
      if not hasattr(spaces.get(c["space"]), "pt_select"):
        built = [n for n in spaces.names() if hasattr(spaces.get(n), "pt_select")]
        raise ConfigError(f"search.selection pt (DARTS-PT) is not built for space "
                          f"{c['space']}; it is for: {', '.join(built)}")
    non_negative(c, "search.select_num")
    non_negative(c, "latency.limit_ms")
    enumerable = [n for n in spaces.names() if hasattr(spaces.get(n), "candidates")]
    for what, on in (("search.selection supernet", c["search.selection"] == "supernet"),
                     ("latency.limit_ms", c["latency.limit_ms"] > 0)):
      if on and c["space"] not in enumerable:
        raise ConfigError(f"{what} chooses among all of a space's architectures, which "
                          f"space {c['space']} cannot list; it is for: {', '.join(enumerable)}")
    if c["latency.limit_ms"] > 0 and (c["search.selection"] == "pt" or c["search.early_stop"]):
      raise ConfigError("latency.limit_ms binds the argmax and supernet selections; "
                        "search.selection pt and search.early_stop choose without it")
    robust_darts.validate(c)
    non_negative(c, "search.arch_start_epoch")
    if c["search.arch_start_epoch"] >= c["search.epochs"]:
      raise ConfigError(f"search.arch_start_epoch ({c['search.arch_start_epoch']}) must be < "
                        f"search.epochs ({c['search.epochs']}): no architecture step would run")
    if c["search.step_order"] not in ("arch_first", "weight_first"):
      raise ConfigError(f"search.step_order {c['search.step_order']!r} is unknown; valid: "
                        f"arch_first, weight_first")
    if c["search.relaxation"] not in RELAXATIONS:
      raise ConfigError(f"search.relaxation {c['search.relaxation']!r} is unknown; valid: "
                        f"{', '.join(RELAXATIONS)}")
    if c["search.relaxation"] == "gumbel":
      positive(c, "search.tau_start")
      positive(c, "search.tau_end")
      if c["search.tau_anneal"] not in ("linear", "exponential"):
        raise ConfigError(f"search.tau_anneal {c['search.tau_anneal']!r} is unknown; valid: "
                          f"linear, exponential")
    try:
      latency.validate_settings(c["latency.objective"], c["latency.weight"],
                                    c["latency.fbnet_alpha"], c["latency.fbnet_beta"],
                                    c["latency.target_ms"])
    except latency.LatencyError as e:
      raise ConfigError(str(e)) from None
    positive(c, "latency.batch_size", int)
    positive(c, "latency.repeats", int)
    if c["latency.estimate"] not in ("expected", "derived"):
      raise ConfigError(f"latency.estimate {c['latency.estimate']!r} is unknown; valid: "
                        f"expected, derived")
  elif mode == "train":
    for k in ("train.epochs", "train.batch_size"):
      positive(c, k, int)
    positive(c, "train.lr")
    for k in ("train.lr_min", "train.momentum", "train.weight_decay", "train.grad_clip",
              "train.auxiliary_weight", "train.cutout", "train.label_smoothing"):
      non_negative(c, k)
    if not 0 <= c["train.drop_path_prob"] < 1:
      raise ConfigError(f"train.drop_path_prob must be in [0, 1), got {c['train.drop_path_prob']!r}")
    if c["train.label_smoothing"] >= 1:
      raise ConfigError(f"train.label_smoothing must be in [0, 1), got {c['train.label_smoothing']!r}")
  else:
    raise ValueError(f"mode must be 'search' or 'train', got {mode!r}")
  space = spaces.get(c["space"])
  if c["method"] == "pc_darts" and not getattr(space, "partial_channels", True):
    raise ConfigError(f"method 'pc_darts' is not available for space {space.name} (its "
                      f"partial channels and edge weights are the DARTS supernet's); valid: "
                      + ", ".join(m for m in methods.METHODS if m != "pc_darts"))
  L = config.latency
  hint = getattr(space, "latency_table_hint", None)
  if hint and (L.objective != "none" or L.limit_ms > 0) and not L.table:
    raise ConfigError(f"space {space.name} takes its latency from latency.table, {hint}")
  space.validate(space_section(config), config.train)
