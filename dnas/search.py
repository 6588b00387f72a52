"""Architecture search. With no arguments: DARTS on the embedded digits set, results in
runs/<timestamp>. `config.space` picks the space (`dnas.spaces`).

python -m dnas.search [--config=dnas/configs/digits.py] [--config.search.epochs=3]
                      [--workdir=runs/s1] [--resume=false]

Rerunning the same command with the same --workdir resumes from the last checkpoint.
"""

import os
import time

import sys

from absl import flags

from dnas import cli, search_lib

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<timestamp>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_RESUME = flags.DEFINE_bool("resume", True, "Continue the run found in --workdir (false: "
                            "refuse to touch a work directory that holds one).")


def main(argv):
  del argv
  workdir = _WORKDIR.value or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
  arch = search_lib.run_search(_CONFIG.value, workdir, progress=_PROGRESS.value,
                               resume=_RESUME.value)
  print(f"architecture: {arch}")
  config = [a for a in sys.argv[1:] if a.startswith("--config") and not a.startswith("--config.")]
  print(f"wrote {os.path.join(workdir, 'genotype.json')}; retrain with: python -m dnas.train "
        f"{' '.join(config + [a for a in sys.argv[1:] if a.startswith('--config.train')])}"
        f"{' ' if config else ''}--genotype={os.path.join(workdir, 'genotype.json')}")


if __name__ == "__main__":
  cli.run(main)
