"""The embedded default data set: scikit-learn's handwritten digits (UCI, 1,797 8x8 images).

Ships with scikit-learn, so it needs no download. Fixed splits (seeded permutation,
stratified by class): train 1,257 / validation 180 / test 360.
"""

import functools

import numpy as np

SPLIT_SIZES = {"validation": 18, "test": 36}  # per class; the rest is train.
MEAN, STD = (0.3057,), (0.3761,)  # of the train split's pixels in [0, 1].


@functools.cache
def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (uint8[n, 8, 8, 1] images in 0..255, int32[n] labels)}."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  rng = np.random.default_rng(0)
  idx = {k: [] for k in ("train", "validation", "test")}
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    v, t = SPLIT_SIZES["validation"], SPLIT_SIZES["test"]
    idx["validation"] += list(members[:v])
    idx["test"] += list(members[v:v + t])
    idx["train"] += list(members[v + t:])
  out = {}
  for split, members in idx.items():
    members = rng.permutation(np.asarray(members))
    out[split] = (images[members], labels[members])
  return out
