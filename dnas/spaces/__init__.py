"""Search spaces, one package each (`from dnas.spaces import darts`), behind one protocol
(`dnas.spaces.base.SearchSpace`); `config.space` names the space a run uses."""

from dnas.spaces.base import ArchError, SearchSpace, load, save
from dnas.spaces.darts import space as darts_space
from dnas.spaces.mobile import space as mobile_space
from dnas.spaces.nb201 import space as nb201_space

_SPACES: dict[str, SearchSpace] = {}


def register(space: SearchSpace) -> SearchSpace:
  """Makes `space` available as `config.space = space.name` (a config file that uses its
  own space imports the module that registers it)."""
  _SPACES[space.name] = space
  return space


def get(name: str) -> SearchSpace:
  """The space called `name`; an unknown name is a ValueError listing the known ones."""
  if name not in _SPACES:
    raise ValueError(f"space {name!r} is unknown; valid: {', '.join(_SPACES)}")
  return _SPACES[name]


def names() -> tuple[str, ...]:
  return tuple(_SPACES)


register(darts_space.SPACE)
register(nb201_space.SPACE)
register(mobile_space.SPACE)
