"""DARTS search. With no arguments: the embedded digits set, results in runs/<timestamp>.

python -m dnas.search [--config=dnas/configs/digits.py] [--config.search.epochs=3]
                      [--workdir=runs/s1] [--resume=false]

Rerunning the same command with the same --workdir resumes from the last checkpoint.
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from dnas import cli, search_lib

_CONFIG = config_flags.DEFINE_config_file("config", cli.DEFAULT_CONFIG, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<timestamp>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_RESUME = flags.DEFINE_bool("resume", True, "Continue the run found in --workdir (false: "
                            "refuse to touch a work directory that holds one).")


def main(argv):
  del argv
  workdir = _WORKDIR.value or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
  genotype = search_lib.run_search(_CONFIG.value, workdir, progress=_PROGRESS.value,
                                   resume=_RESUME.value)
  print(f"genotype: {genotype}")
  print(f"wrote {os.path.join(workdir, 'genotype.json')}; retrain with: "
        f"python -m dnas.train --genotype={os.path.join(workdir, 'genotype.json')}")


if __name__ == "__main__":
  cli.run(main)
