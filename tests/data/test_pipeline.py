"""The data sets (embedded digits, TFDS through mock data) and the Grain batch pipeline."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from dnas.data import DataError, get_dataset, make_augment, make_batches, search_splits
from dnas.data import augment as augment_lib
from dnas.data.pipeline import Augment, auto_workers, eval_batch_spec


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
  np.testing.assert_array_equal(a[0]["image"], splits["train"].images[628])


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
  assert all(b["image"].shape == (64, 8, 8, 1) for b in batches)  # last one padded
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 360 and not mask[360:].any()
  labels = np.concatenate([b["label"] for b in batches])[:360]
  np.testing.assert_array_equal(labels, splits["test"].labels)
  x = (splits["test"].images[0].astype(np.float32) / 255 - info.mean[0]) / info.std[0]
  np.testing.assert_allclose(batches[0]["image"][0], x, rtol=1e-6)


def _specs(batch):
  return {k: (np.shape(v), np.asarray(v).dtype) for k, v in batch.items()}


def test_eval_batch_spec_is_what_eval_batches_are():
  # An evaluation compiled ahead from the spec must be the program its batches call.
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1, flip=True)
  spec = eval_batch_spec(splits["validation"], batch_size=32, augment=aug)
  for b in (next(make_batches(splits["validation"], batch_size=32, seed=0, epoch=0,
                              augment=aug, train=False)),
            list(make_batches(splits["validation"], batch_size=32, seed=0, epoch=0,
                              augment=aug, train=False))[-1]):  # the padded last one
    assert _specs(b) == {k: (v.shape, v.dtype) for k, v in spec.items()}
  with tfds.testing.mock_data(num_examples=6):
    info, splits = get_dataset("imagenette", image_size=64)
    aug = make_augment(info)
    e = next(make_batches(splits["validation"], batch_size=3, seed=0, epoch=0, augment=aug,
                          train=False))
    spec = eval_batch_spec(splits["validation"], batch_size=3, augment=aug)
    assert _specs(e) == {k: (v.shape, v.dtype) for k, v in spec.items()}


def test_start_skips_batches_exactly():
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1)
  full = list(make_batches(splits["train"], batch_size=32, seed=3, epoch=2, augment=aug))
  tail = list(make_batches(splits["train"], batch_size=32, seed=3, epoch=2, augment=aug, start=5))
  assert len(tail) == len(full) - 5
  for a, b in zip(full[5:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_process_slices_concatenate_to_the_global_batch():
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1, cutout=2)
  kw = dict(batch_size=32, seed=5, epoch=1, augment=aug)
  whole = list(make_batches(splits["train"], **kw))
  halves = [list(make_batches(splits["train"], process=(16 * p, 16), **kw)) for p in range(2)]
  assert len(halves[0]) == len(halves[1]) == len(whole)
  for w, h0, h1 in zip(whole, *halves):
    np.testing.assert_array_equal(w["image"], np.concatenate([h0["image"], h1["image"]]))
    np.testing.assert_array_equal(w["label"], np.concatenate([h0["label"], h1["label"]]))


def test_worker_processes_give_the_same_batches():
  flags.FLAGS(["pytest"], known_only=True)  # Grain's worker pool reads absl flags
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1)
  kw = dict(batch_size=64, seed=1, epoch=0, augment=aug, start=2)
  a = list(make_batches(splits["train"], **kw))
  b = list(make_batches(splits["train"], workers=2, **kw))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_one_pipeline_for_several_epochs_gives_each_epochs_batches():
  # What the loops iterate (one Grain pool for the run): from batch 3 of epoch 1 to the end
  # of epoch 3, 5 batches per epoch (capped epochs), equal to the epochs made one by one.
  flags.FLAGS(["pytest"], known_only=True)
  info, splits = get_dataset("digits")
  aug = Augment(info.mean, info.std, crop_padding=1, cutout=2)
  kw = dict(batch_size=16, seed=3, augment=aug, batches_per_epoch=5)
  expected = [b for e in (1, 2, 3)
              for b in make_batches(splits["train"], epoch=e, start=3 if e == 1 else 0, **kw)]
  assert len(expected) == 2 + 5 + 5
  for workers in (0, 2):
    got = list(make_batches(splits["train"], epoch=1, start=3, epochs=4, workers=workers, **kw))
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])


def test_auto_workers_leave_the_cpu_to_xla():
  assert auto_workers(-1) == 0 and auto_workers(3) == 3  # this is a CPU backend


def test_cifar10_through_tfds_data_source():
  with tfds.testing.mock_data(num_examples=40):
    info, splits = get_dataset("cifar10")
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    w, a = search_splits(splits["train"], 0.5)
    assert (len(w), len(a)) == (20, 20)
    np.testing.assert_array_equal(a[0]["image"], splits["train"][20]["image"])
    aug = make_augment(info, crop_padding=4, flip=True, cutout=16)
    b = next(make_batches(w, batch_size=8, seed=0, epoch=0, augment=aug))
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["label"].max() < 10
    ev = list(make_batches(splits["test"], batch_size=16, seed=0, epoch=0, augment=aug,
                           train=False))
    assert sum(e["mask"].sum() for e in ev) == 40 and ev[-1]["image"].shape[0] == 16


def test_imagenet_style_augmentation_gives_fixed_size_crops():
  with tfds.testing.mock_data(num_examples=6):
    info, splits = get_dataset("imagenette", image_size=64)
    assert info.image_shape == (64, 64, 3) and info.kind == "imagenet"
    aug = make_augment(info)
    b = next(make_batches(splits["train"], batch_size=3, seed=0, epoch=0, augment=aug))
    assert b["image"].shape == (3, 64, 64, 3) and np.isfinite(b["image"]).all()
    e = next(make_batches(splits["validation"], batch_size=3, seed=0, epoch=0, augment=aug,
                          train=False))
    assert e["image"].shape == (3, 64, 64, 3)


def test_hue_shift_matches_colorsys():
  import colorsys
  rng = np.random.default_rng(1)
  x = rng.random((5, 7, 3)).astype(np.float32)
  got = augment_lib._shift_hue(x, 0.3)  # pylint: disable=protected-access
  for px, out in zip(x.reshape(-1, 3), got.reshape(-1, 3)):
    h, s, v = colorsys.rgb_to_hsv(*px)
    np.testing.assert_allclose(out, colorsys.hsv_to_rgb((h + 0.3) % 1.0, s, v), atol=1e-5)


def test_unprepared_data_set_is_one_clear_error(tmp_path):
  with pytest.raises(DataError, match=r"data set 'cifar100' \(cifar100\) is not prepared in "
                     r".*: run python -m dnas.data.prepare cifar100 --data_dir="):
    get_dataset("cifar100", str(tmp_path))
