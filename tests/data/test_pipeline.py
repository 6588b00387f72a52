"""The digits data set and the Grain batch pipeline."""

import numpy as np

from dnas.data import get_dataset, make_batches, search_splits
from dnas.data.pipeline import Augment


def test_digits_splits_fixed_disjoint_and_complete():
  info, splits = get_dataset("digits")
  assert {k: len(v) for k, v in splits.items()} == {"train": 1257, "validation": 180, "test": 360}
  assert info.image_shape == (8, 8, 1) and info.num_classes == 10
  rows = {k: {v.images[i].tobytes() + bytes([v.labels[i]]) for i in range(len(v))}
          for k, v in splits.items()}
  # No example is shared between splits (duplicates within the UCI set aside).
  assert len(rows["test"] & rows["train"]) <= 2 and len(rows["validation"] & rows["train"]) <= 2
  _, again = get_dataset("digits")
  np.testing.assert_array_equal(again["test"].labels, splits["test"].labels)
  w, a = search_splits(splits["train"], 0.5)
  assert (len(w), len(a)) == (628, 629)
  np.testing.assert_array_equal(a.images[0], splits["train"].images[628])


def test_batches_deterministic_per_epoch_and_augmented():
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1, cutout=3)
  b = lambda epoch: next(make_batches(splits["train"], batch_size=16, seed=1, epoch=epoch,
                                      augment=aug))
  b0, b0_again, b1 = b(0), b(0), b(1)
  np.testing.assert_array_equal(b0["image"], b0_again["image"])
  assert not np.array_equal(b0["label"], b1["label"])
  assert b0["image"].shape == (16, 8, 8, 1) and b0["image"].dtype == np.float32
  assert b0["label"].dtype == np.int32


def test_eval_batches_cover_split_in_order():
  info, splits = get_dataset("digits")
  batches = list(make_batches(splits["test"], batch_size=64, seed=0, epoch=0,
                              augment=Augment(info.mean, info.std), train=False))
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, splits["test"].labels)
  x = (splits["test"].images[0].astype(np.float32) / 255 - info.mean[0]) / info.std[0]
  np.testing.assert_allclose(batches[0]["image"][0], x, rtol=1e-6)
