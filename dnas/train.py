"""Retrain a genotype from scratch and report its test accuracy.

python -m dnas.train --genotype=runs/s1/genotype.json [--config=dnas/configs/digits.py]
                     [--config.train.epochs=10] [--workdir=runs/s1]
"""

import json

from absl import flags
from ml_collections import config_flags

from dnas import cli, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", cli.DEFAULT_CONFIG, "Config file.",
                                          lock_config=True)
_GENOTYPE = flags.DEFINE_string("genotype", None, "Genotype JSON file (from dnas.search).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: the genotype's).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_RESUME = flags.DEFINE_bool("resume", True, "Continue the run found in --workdir (false: "
                            "refuse to touch a work directory that holds one).")


def main(argv):
  del argv
  if not _GENOTYPE.value:
    cli.fail("--genotype is required (a genotype.json written by python -m dnas.search)")
  result = train_lib.run_train(_CONFIG.value, _GENOTYPE.value, _WORKDIR.value,
                               progress=_PROGRESS.value, resume=_RESUME.value)
  print(json.dumps({k: result[k] for k in ("test_acc", "test_loss", "params", "checkpoint")}))


if __name__ == "__main__":
  cli.run(main)
