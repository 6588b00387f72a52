"""Prepare a TFDS data set for dnas (the only step that needs TensorFlow).

python -m dnas.data.prepare cifar10 [--data_dir=gs://bucket/tfds] [--manual_dir=~/downloads]

Needs `pip install 'dnas[prepare]'`. ImageNet (imagenet2012) cannot be downloaded by
TFDS: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into --manual_dir.
Searches and training then read the prepared files with `tfds.data_source` (no
TensorFlow): `--config.data.data_dir=<the same data_dir>`.
"""

import sys

from absl import app, flags

from dnas.data.pipeline import TFDS_DATASETS

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write the prepared data "
                                "(default: TFDS's, ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Directory holding manually "
                                  "downloaded archives (ImageNet).")


def _fail(message):
  print(f"dnas: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) != 2:
    _fail(f"give one data set name: python -m dnas.data.prepare NAME; names: "
          f"{', '.join(TFDS_DATASETS)}")
  name = argv[1]
  if name not in TFDS_DATASETS:
    _fail(f"unknown data set {name!r}; names: {', '.join(TFDS_DATASETS)}")
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    _fail("preparing TFDS data needs TensorFlow: pip install 'dnas[prepare]'")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(TFDS_DATASETS[name][0], data_dir=_DATA_DIR.value)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=_MANUAL_DIR.value))
  print(f"prepared {name} in {builder.data_dir}; use --config.data.name={name} "
        f"--config.data.data_dir={_DATA_DIR.value or '<default>'}")


if __name__ == "__main__":
  try:
    app.run(main)
  except flags.Error as e:
    _fail(e)
