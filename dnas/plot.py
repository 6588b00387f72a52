"""Draws the cells of a genotype as the DARTS paper's figures do.

python -m dnas.plot runs/x/genotype.json [--out=runs/x/cells]
python -m dnas.plot DARTS_V2 --out=darts_v2      # a published genotype, by name

Writes <out>_normal.png/.svg and <out>_reduce.png/.svg (default <out>: the genotype
file's path without .json, or the genotype's name).
"""

import os

from absl import flags

from dnas import cli, plotting
from dnas.spaces import darts

_OUT = flags.DEFINE_string("out", None, "Path prefix of the drawings.")


def main(argv):
  if len(argv) != 2:
    cli.fail("give one genotype: a genotype.json file or a published name "
             f"({', '.join(darts.GENOTYPES)})")
  source = argv[1]
  if source in darts.GENOTYPES:
    genotype, prefix = darts.GENOTYPES[source], source
  else:
    genotype, prefix = darts.load_genotype(source), os.path.splitext(source)[0]
  try:
    paths = plotting.plot_genotype(genotype, _OUT.value or prefix)
  except OSError as e:
    cli.fail(f"cannot write the drawings to {_OUT.value or prefix}: {e.strerror or e}")
  for path in paths:
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main, positional=True)
