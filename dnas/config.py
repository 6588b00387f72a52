"""Config validation: every user mistake becomes one ConfigError line, before compiling."""

from dnas import bilevel, latency_lib, utils
from dnas.data.pipeline import DATASETS
from dnas.spaces.darts.search import RELAXATIONS
from dnas.spaces.darts.ops import PRIMITIVES

NETWORKS = ("cifar", "imagenet")
METHODS = ("darts", "pc_darts")


class ConfigError(ValueError):
  """A config value that is not allowed; the message names it and what is allowed."""


def _positive(c, key, kind=float):
  v = c[key]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (kind is int and v != int(v)):
    raise ConfigError(f"{key} must be a positive {'integer' if kind is int else 'number'}, got {v!r}")


def _non_negative(c, key):
  v = c[key]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
    raise ConfigError(f"{key} must be >= 0, got {v!r}")


def flatten(config) -> dict:
  """Nested dict or ConfigDict -> {'a.b': value}."""
  out = {}
  for k, v in config.items():
    if hasattr(v, "items"):
      out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
    else:
      out[k] = v
  return out


def validate(config, mode: str) -> None:
  """Checks the parts of `config` that `mode` ("search" or "train") uses."""
  c = flatten(config)
  if c["data.name"] not in DATASETS:
    raise ConfigError(f"data.name {c['data.name']!r} is unknown; available: {', '.join(DATASETS)}")
  if not 0 < c["data.train_portion"] < 1:
    raise ConfigError(f"data.train_portion must be in (0, 1), got {c['data.train_portion']!r}")
  _non_negative(c, "data.crop_padding")
  _non_negative(c, "max_steps_per_epoch")
  _non_negative(c, "checkpoint.every_steps")
  _non_negative(c, "data.workers")
  _positive(c, "data.image_size", int)
  _non_negative(c, "mesh.devices")
  _positive(c, "mesh.fsdp", int)
  _positive(c, "checkpoint.keep", int)
  if c.get("dtype", "float32") not in utils.DTYPES:
    raise ConfigError(f"dtype {c['dtype']!r} is unknown; valid: {', '.join(utils.DTYPES)}")
  if mode == "search":
    for k in ("model.C", "model.layers", "model.steps", "model.multiplier", "model.stem_multiplier",
              "search.epochs", "search.batch_size"):
      _positive(c, k, int)
    for k in ("search.w_lr", "search.a_lr", "search.fd_r"):
      _positive(c, k)
    for k in ("search.w_lr_min", "search.momentum", "search.weight_decay", "search.grad_clip",
              "search.a_weight_decay"):
      _non_negative(c, k)
    if c["search.w_lr_min"] > c["search.w_lr"]:
      raise ConfigError(f"search.w_lr_min ({c['search.w_lr_min']}) must be <= search.w_lr "
                        f"({c['search.w_lr']})")
    for k in ("search.a_b1", "search.a_b2"):
      if not 0 <= c[k] < 1:
        raise ConfigError(f"{k} must be in [0, 1), got {c[k]!r}")
    if c["search.order"] not in bilevel.ORDERS:
      raise ConfigError(f"search.order {c['search.order']!r} is unknown; valid: "
                        f"{', '.join(bilevel.ORDERS)}")
    if c.get("search.programs", "auto") not in bilevel.PROGRAMS:
      raise ConfigError(f"search.programs {c['search.programs']!r} is unknown; valid: "
                        f"{', '.join(bilevel.PROGRAMS)}")
    if c["model.multiplier"] > c["model.steps"]:
      raise ConfigError(f"model.multiplier ({c['model.multiplier']}) must be <= model.steps "
                        f"({c['model.steps']})")
    ops = c.get("model.primitives", PRIMITIVES)
    bad = [p for p in ops if p not in PRIMITIVES]
    if bad:
      raise ConfigError(f"model.primitives: unknown op {bad[0]!r}; valid ops: {', '.join(PRIMITIVES)}")
    method = c.get("method", "darts")
    if method not in METHODS:
      raise ConfigError(f"method {method!r} is unknown; valid: {', '.join(METHODS)}")
    c.setdefault("search.arch_start_epoch", 0)
    _non_negative(c, "search.arch_start_epoch")
    if c["search.arch_start_epoch"] >= c["search.epochs"]:
      raise ConfigError(f"search.arch_start_epoch ({c['search.arch_start_epoch']}) must be < "
                        f"search.epochs ({c['search.epochs']}): no architecture step would run")
    if method == "pc_darts":
      _positive(c, "model.pc_k", int)
      if c["model.C"] % c["model.pc_k"]:
        raise ConfigError(f"model.pc_k={c['model.pc_k']} must divide model.C={c['model.C']}: "
                          f"each edge mixes C / pc_k channels")
    if c.get("search.relaxation", "softmax") not in RELAXATIONS:
      raise ConfigError(f"search.relaxation {c['search.relaxation']!r} is unknown; valid: "
                        f"{', '.join(RELAXATIONS)}")
    if c.get("search.relaxation") == "gumbel":
      _positive(c, "search.tau_start")
      _positive(c, "search.tau_end")
      if c["search.tau_anneal"] not in ("linear", "exponential"):
        raise ConfigError(f"search.tau_anneal {c['search.tau_anneal']!r} is unknown; valid: "
                          f"linear, exponential")
    if "latency.objective" in c:
      try:
        latency_lib.validate_settings(c["latency.objective"], c["latency.weight"],
                                      c["latency.fbnet_alpha"], c["latency.fbnet_beta"],
                                      c["latency.target_ms"])
      except latency_lib.LatencyError as e:
        raise ConfigError(str(e)) from None
      _positive(c, "latency.batch_size", int)
      _positive(c, "latency.repeats", int)
  elif mode == "train":
    for k in ("train.C", "train.layers", "train.epochs", "train.batch_size"):
      _positive(c, k, int)
    _positive(c, "train.lr")
    for k in ("train.lr_min", "train.momentum", "train.weight_decay", "train.grad_clip",
              "train.auxiliary_weight", "train.cutout", "train.label_smoothing"):
      _non_negative(c, k)
    if not 0 <= c["train.drop_path_prob"] < 1:
      raise ConfigError(f"train.drop_path_prob must be in [0, 1), got {c['train.drop_path_prob']!r}")
    if c["train.label_smoothing"] >= 1:
      raise ConfigError(f"train.label_smoothing must be in [0, 1), got {c['train.label_smoothing']!r}")
    if c["train.network"] not in NETWORKS:
      raise ConfigError(f"train.network {c['train.network']!r} is unknown; valid: {', '.join(NETWORKS)}")
  else:
    raise ValueError(f"mode must be 'search' or 'train', got {mode!r}")
