"""Retrain a found architecture from scratch and report its test accuracy.

python -m dnas.train --genotype=runs/s1/genotype.json [--config=dnas/configs/digits.py]
                     [--config.train.epochs=10] [--workdir=runs/s1]
python -m dnas.train --genotype=DARTS_V2     # a published architecture, by name
"""

import json

from absl import flags

from dnas import cli, train_lib

_CONFIG = cli.define_config_flag()
_GENOTYPE = flags.DEFINE_string("genotype", None, "Architecture: the genotype.json file "
                                "a search wrote, or a published name (DARTS_V2, ...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: the genotype "
                               "file's, or runs/train-<name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_RESUME = flags.DEFINE_bool("resume", True, "Continue the run found in --workdir (false: "
                            "refuse to touch a work directory that holds one).")


def main(argv):
  del argv
  if not _GENOTYPE.value:
    cli.fail("--genotype is required (a genotype.json written by python -m dnas.search, or a "
             "published name such as DARTS_V2)")
  result = train_lib.run_train(_CONFIG.value, _GENOTYPE.value, _WORKDIR.value,
                               progress=_PROGRESS.value, resume=_RESUME.value)
  print(json.dumps({k: result[k] for k in ("test_acc", "test_loss", "params", "checkpoint")}))


if __name__ == "__main__":
  cli.run(main)
