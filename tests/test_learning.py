"""Training learns: the tiny retraining and a search on your own data end well above
chance, not merely without error."""

import json

import numpy as np

from tests import cli_helpers


def test_tiny_retraining_of_darts_v2_learns_the_digits(tmp_path):
  # 3 epochs of a 2-cell, C=4 NetworkCIFAR (1,774 parameters) on the digits' 1,257
  # training images: 0.675 test accuracy here (`python -m dnas.train` with these flags,
  # XLA's default optimisation; the suite compiles at level 0). Chance is 0.1 (10 balanced classes); over
  # the 360 test images its binomial spread is 0.016, so 0.4 is ~19 spreads above what a
  # network that learnt nothing scores, with room for another platform's rounding.
  out = cli_helpers.run("dnas.train", f"--config={cli_helpers.TINY}", "--genotype=DARTS_V2",
                        "--config.train.epochs=3", "--config.max_steps_per_epoch=0",
                        "--config.train.batch_size=32", f"--workdir={tmp_path}",
                        "--progress=false")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "train_result.json") as f:
    result = json.load(f)
  assert result["test_acc"] >= 0.4, result


def test_search_on_own_npz_data_learns(tmp_path):
  # Four classes told apart by which quadrant of an 8x8 RGB image is brighter (noise
  # elsewhere); 256 images, a tenth held out, half of the rest the architecture split
  # (116 images) on which the supernet is evaluated. 5 epochs of the tiny four-op
  # supernet: validation accuracy 0.21, 0.28, 0.87, 1.0, 1.0 here. Chance is 0.25 with a
  # binomial spread of 0.04 over 116 images, so 0.6 is ~9 spreads above chance.
  rng = np.random.default_rng(0)
  y = np.arange(256) % 4
  x = rng.integers(0, 100, (256, 8, 8, 3)).astype(np.uint8)
  for i, c in enumerate(y):
    r, q = divmod(int(c), 2)
    x[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 120
  np.savez(tmp_path / "quadrants.npz", x_train=x, y_train=y)
  out = cli_helpers.run("dnas.search", *cli_helpers.FAST, "--config.search.epochs=5",
                        "--config.max_steps_per_epoch=0", "--config.search.batch_size=16",
                        "--config.checkpoint.every_steps=0", "--config.data.name=npz",
                        f"--config.data.data_dir={tmp_path / 'quadrants.npz'}",
                        f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 5 and records[-1]["valid_acc"] >= 0.6, records[-1]
  assert (tmp_path / "run" / "genotype.json").exists()
