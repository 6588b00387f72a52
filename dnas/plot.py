"""Draws the cells of a genotype as the DARTS paper's figures do.

python -m dnas.plot runs/x/genotype.json [--out=runs/x/cells] [--space=darts]
python -m dnas.plot DARTS_V2 --out=darts_v2      # a published genotype, by name

Writes <out>_normal.png/.svg and <out>_reduce.png/.svg (default <out>: the genotype
file's path without .json, or the genotype's name).
"""

import os

from absl import flags

from dnas import cli, spaces

_OUT = flags.DEFINE_string("out", None, "Path prefix of the drawings.")
_SPACE = flags.DEFINE_string("space", "darts", "The search space of the architecture.")


def main(argv):
  try:
    space = spaces.get(_SPACE.value)
  except ValueError as e:
    cli.fail(f"--space: {e}")
  if len(argv) != 2:
    cli.fail("give one genotype: a genotype.json file or a published name "
             f"({', '.join(space.published)})")
  source = argv[1]
  genotype = spaces.load(space, source)
  prefix = source if source in space.published else os.path.splitext(source)[0]
  try:
    paths = space.draw(genotype, _OUT.value or prefix)
  except OSError as e:
    cli.fail(f"cannot write the drawings to {_OUT.value or prefix}: {e.strerror or e}")
  for path in paths:
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main, positional=True)
