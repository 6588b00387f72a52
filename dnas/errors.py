"""User errors and the checks that raise them: a leaf module (it imports nothing of dnas),
so every layer can raise a ConfigError without importing the validator."""


class ConfigError(ValueError):
  """A config value that is not allowed; the message names it and what is allowed."""


def positive(c, key, kind=float):
  """Raises ConfigError unless `c[key]` is a positive number (an integer if `kind` is int)."""
  v = c[key]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (kind is int and v != int(v)):
    raise ConfigError(f"{key} must be a positive {'integer' if kind is int else 'number'}, got {v!r}")


def non_negative(c, key):
  """Raises ConfigError unless `c[key]` is a number >= 0."""
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
