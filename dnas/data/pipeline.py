"""The input pipeline shared by all data sets: random-access sources -> Grain -> batches.

A data set is one random-access source per split, each returning
{"image": uint8[H, W, C], "label": int} (the layout of `tfds.data_source`), and a
`DatasetInfo`. `make_batches` turns a source into this process's slices of shuffled,
augmented global batches: {"image": f32[B, H, W, C] normalised, "label": int32[B]}.

Determinism: the shuffle is one global permutation per (seed, epoch), and each example's
augmentation draws from a generator seeded by (seed, epoch, global position). A batch is
therefore the same whatever the number of processes, Grain worker processes or the point
where a run was resumed; (epoch, batch index) is the whole iterator state.
"""

import dataclasses
import os

import grain
import numpy as np
from absl import logging as absl_logging

from dnas.data import augment as augment_lib
from dnas.data import digits, own
from dnas.data.augment import Augment, ImageNetAugment  # noqa: F401  (re-exported)


class DataError(ValueError):
  """A data set that is unknown or not available here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: tuple[int, int, int]  # of the batches (after resizing, for ImageNet)
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  kind: str = "cifar"  # augmentation family: "cifar" (pad-crop-flip) or "imagenet"


class ArraySource:
  """Random-access source over in-memory arrays (grain.RandomAccessDataSource protocol)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": self.labels[i]}


class SubsetSource:
  """Examples [start, stop) of another source."""

  def __init__(self, source, start: int, stop: int):
    if not 0 <= start <= stop <= len(source):
      raise ValueError(f"subset [{start}, {stop}) of a source of {len(source)}")
    self.source, self.start, self.stop = source, start, stop

  def __len__(self):
    return self.stop - self.start

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(i)
    return self.source[self.start + i]


class TfdsSource:
  """A `tfds.data_source` split as {"image", "label"} examples (no TensorFlow needed)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = self.source[int(i)]
    return {"image": ex["image"], "label": ex["label"]}


_CIFAR10 = ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768))
_CIFAR100 = ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# name -> (TFDS name, {our split: TFDS split}, num_classes, stats, kind). As in the
# reference train.py, "validation" of the CIFAR sets is their test split (the
# reference reports per-epoch test accuracy); ImageNet's labelled test is its validation.
TFDS_DATASETS = {
    "cifar10": ("cifar10", {"train": "train", "validation": "test", "test": "test"}, 10,
                _CIFAR10, "cifar"),
    "cifar100": ("cifar100", {"train": "train", "validation": "test", "test": "test"}, 100,
                 _CIFAR100, "cifar"),
    "imagenet2012": ("imagenet2012", {"train": "train", "validation": "validation",
                                      "test": "validation"}, 1000, _IMAGENET, "imagenet"),
    "imagenette": ("imagenette/320px-v2", {"train": "train", "validation": "validation",
                                           "test": "validation"}, 10, _IMAGENET, "imagenet"),
}
# Your own images (`dnas.data.own`), at `data.data_dir`.
OWN_DATASETS = ("folder", "npz")
DATASETS = ("digits",) + tuple(TFDS_DATASETS) + OWN_DATASETS


def _own(name: str, data_dir: str, image_size: int):
  try:
    return own.load(name, data_dir, image_size)
  except own.OwnDataError as e:
    raise DataError(str(e)) from None


def dataset_info(name: str, image_size: int = 224, data_dir: str = "") -> DatasetInfo:
  """What a data set's batches look like, without reading it (`get_dataset` reads; own
  data, `folder` and `npz` at `data_dir`, is read once to see its shape and classes)."""
  if name == "digits":
    return DatasetInfo("digits", (8, 8, 1), 10, digits.MEAN, digits.STD)
  if name in OWN_DATASETS:
    shape, num_classes, mean, std, _ = _own(name, data_dir, image_size)
    return DatasetInfo(name, shape, num_classes, mean, std)
  if name not in TFDS_DATASETS:
    raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
  _, _, num_classes, (mean, std), kind = TFDS_DATASETS[name]
  shape = (32, 32, 3) if kind == "cifar" else (image_size, image_size, 3)
  return DatasetInfo(name, shape, num_classes, mean, std, kind)


def get_dataset(name: str, data_dir: str = "", image_size: int = 224
                ) -> tuple[DatasetInfo, dict[str, object]]:
  """(info, {"train", "validation", "test": source}) for a data set name.

  `data_dir` holds TFDS-prepared data (default: TFDS's, ~/tensorflow_datasets), or own
  data (`folder`: an image-folder tree, `npz`: a file; `dnas.data.own`); `image_size` is
  the side of ImageNet-style crops, and of own images of several sizes.
  """
  info = dataset_info(name, image_size, data_dir)
  if name == "digits":
    return info, {k: ArraySource(*v) for k, v in digits.load_splits().items()}
  if name in OWN_DATASETS:
    return info, {k: ArraySource(*v) for k, v in _own(name, data_dir, image_size)[4].items()}
  tfds_name, split_names = TFDS_DATASETS[name][:2]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about every folder it probes
  try:
    sources = {s: tfds.data_source(tfds_name, split=split_names[s], data_dir=data_dir or None,
                                   download=False)
               for s in ("train", "validation", "test")}
  except Exception:  # pylint: disable=broad-except  (TFDS raises several kinds)
    where = data_dir or "the default TFDS directory (~/tensorflow_datasets)"
    flag = f" --data_dir={data_dir}" if data_dir else ""
    raise DataError(f"data set {name!r} ({tfds_name}) is not prepared in {where}: run "
                    f"python -m dnas.data.prepare {name}{flag}  (needs pip install "
                    f"'dnas[prepare]')") from None
  finally:
    absl_logging.set_verbosity(verbosity)
  return info, {k: TfdsSource(v) for k, v in sources.items()}


def search_splits(train, portion: float):
  """The reference's search split: the first `portion` of the training set trains the
  weights, the rest the architecture (train_search.py, train_portion=0.5)."""
  n = int(np.floor(portion * len(train)))
  return SubsetSource(train, 0, n), SubsetSource(train, n, len(train))


def make_augment(info: DatasetInfo, *, crop_padding: int = 0, flip: bool = False,
                 cutout: int = 0):
  """The training augmentation of a data set's family (DARTS or ImageNet)."""
  if info.kind == "imagenet":
    return ImageNetAugment(info.mean, info.std, info.image_shape[0])
  return Augment(info.mean, info.std, crop_padding, flip, cutout)


class _ProcessView:
  """This process's examples of epochs [epoch, epochs): in each epoch's permutation
  (seeded by (seed, epoch); the identity for eval), global batch b holds permuted
  positions [b G, (b + 1) G), and this process reads [b G + offset, b G + offset + L).
  Items are (epoch, position, example index or -1 past the end)."""

  def __init__(self, num_examples, global_batch, offset, local_batch, num_batches, *,
               seed, epoch, epochs, train):
    self.G, self.offset, self.L = global_batch, offset, local_batch
    self.per_epoch = num_batches * local_batch
    self.num_examples, self.seed, self.epoch, self.train = num_examples, seed, epoch, train
    self.n = (epochs - epoch) * self.per_epoch
    self._perm = (None, None)

  def perm(self, epoch):
    if self._perm[0] != epoch:  # one epoch at a time, in each worker
      n = self.num_examples
      self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n)
                    if self.train else np.arange(n))
    return self._perm[1]

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    epoch, i = self.epoch + i // self.per_epoch, i % self.per_epoch
    pos = (i // self.L) * self.G + self.offset + i % self.L
    return epoch, pos, (self.perm(epoch)[pos] if pos < self.num_examples else -1)


def make_batches(source, *, batch_size: int, seed: int, epoch: int, augment,
                 train: bool = True, start: int = 0, workers: int = 0,
                 process: tuple[int, int] | None = None, epochs: int | None = None,
                 batches_per_epoch: int | None = None):
  """This process's batches of one epoch (or of epochs [epoch, epochs)), through Grain.

  Train: a fresh permutation and augmentation per (seed, epoch); the last partial global
  batch is dropped. Eval (train=False): every example once in order, no augmentation;
  the last batch is padded to full size with `mask` 0 (f32[B], 1 for real examples), so
  every batch has one shape (one compile) that divides over devices.

  Args:
    source: random-access source of {"image", "label"}.
    batch_size: the global batch size.
    start: first batch to yield: (epoch, start) is the iterator state a checkpoint keeps.
    workers: Grain worker processes for reading and augmenting (0: in this process).
    process: (offset, size) of this process's slice of each global batch (default all).
    epochs: yield the epochs up to this one, one after the other, from one pipeline (one
      worker pool for the whole run); default: epoch `epoch` only.
    batches_per_epoch: batches of each epoch (default all; fewer for capped epochs).

  Yields:
    {"image": f32[L, H, W, C], "label": int32[L]} (+ "mask" in eval), L the slice size.
  """
  n = len(source)
  offset, local = process or (0, batch_size)
  num_batches = n // batch_size if train else -(-n // batch_size)
  if batches_per_epoch is not None:
    num_batches = min(num_batches, batches_per_epoch)
  view = _ProcessView(n, batch_size, offset, local, num_batches, seed=seed, epoch=epoch,
                      epochs=epoch + 1 if epochs is None else epochs, train=train)

  def load(item):
    e, pos, index = item
    if index < 0:  # eval padding past the end
      ex = source[0]
      out = augment.evaluate(ex)
      return {"image": np.zeros_like(out["image"]), "label": np.int32(0),
              "mask": np.float32(0)}
    ex = source[int(index)]
    if train:
      return augment(ex, np.random.default_rng([seed, e, pos]))
    return dict(augment.evaluate(ex), mask=np.float32(1))

  ds = grain.MapDataset.source(view).map(load).batch(local, drop_remainder=False)[start:]
  if workers:
    ds = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  yield from ds


def eval_batch_spec(source, *, batch_size: int, augment, sharding=None) -> dict:
  """The shapes and dtypes of `make_batches(..., train=False)`'s global batches, as
  `jax.ShapeDtypeStruct`s with `sharding` (to compile an evaluation before its data
  arrive): {"image": f32[B, H, W, C], "label": int32[B], "mask": f32[B]}."""
  import jax  # pylint: disable=g-import-not-at-top
  image = np.asarray(augment.evaluate(source[0])["image"])
  def spec(shape, dtype):
    return jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
  return {"image": spec(image.shape, image.dtype), "label": spec((), np.int32),
          "mask": spec((), np.float32)}


def auto_workers(workers: int) -> int:
  """`config.data.workers`: -1 picks a count for this host: none when the backend is the
  CPU (XLA:CPU's step uses every core; a worker would take cores from it), otherwise
  half the cores, at most 8. Other values are used as they are."""
  if workers >= 0:
    return workers
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu":
    return 0
  return min(8, (os.cpu_count() or 1) // 2)


__all__ = ["DataError", "DatasetInfo", "ArraySource", "SubsetSource", "TfdsSource", "DATASETS",
           "TFDS_DATASETS", "get_dataset", "search_splits", "make_batches", "eval_batch_spec",
           "make_augment", "Augment", "ImageNetAugment", "augment_lib"]
