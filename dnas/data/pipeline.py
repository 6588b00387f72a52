"""The input-pipeline interface shared by all data sets.

A data set is a set of random-access sources, one per split, each returning
{"image": uint8[H, W, C], "label": int} (the layout of `tfds.data_source`), and a
`DatasetInfo`. `make_batches` turns a source into shuffled, augmented batches with
Grain: {"image": f32[B, H, W, C] normalised, "label": int32[B]}.
"""

import dataclasses

import grain
import numpy as np

from dnas.data import digits


class DataError(ValueError):
  """A data set that is unknown or not available here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]


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

  def subset(self, start: int, stop: int) -> "ArraySource":
    return ArraySource(self.images[start:stop], self.labels[start:stop])


DATASETS = ("digits", "cifar10")


def get_dataset(name: str, data_dir: str = "") -> tuple[DatasetInfo, dict[str, ArraySource]]:
  """(info, {"train", "validation", "test": source}) for a data set name."""
  if name == "digits":
    splits = digits.load_splits()
    info = DatasetInfo("digits", (8, 8, 1), 10, digits.MEAN, digits.STD)
    return info, {k: ArraySource(*v) for k, v in splits.items()}
  if name == "cifar10":
    raise DataError("data set 'cifar10' needs TFDS-prepared data, and dnas cannot read "
                    "TFDS data yet (the TFDS + Grain pipelines are the next milestone); "
                    "use data.name=digits")
  raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")


def search_splits(train: ArraySource, portion: float) -> tuple[ArraySource, ArraySource]:
  """The reference's search split: the first `portion` of the training set trains the
  weights, the rest the architecture (train_search.py, train_portion=0.5)."""
  n = int(np.floor(portion * len(train)))
  return train.subset(0, n), train.subset(n, len(train))


@dataclasses.dataclass(frozen=True)
class Augment:
  """DARTS augmentation, per example: random crop after zero padding, optional
  horizontal flip, normalisation, then cutout (in normalised space, as the reference)."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int = 0
  flip: bool = False
  cutout: int = 0

  def __call__(self, example, rng: np.random.Generator):
    image = example["image"]
    h, w, _ = image.shape
    if self.crop_padding:
      p = self.crop_padding
      padded = np.pad(image, ((p, p), (p, p), (0, 0)))
      y, x = rng.integers(0, 2 * p + 1, size=2)
      image = padded[y:y + h, x:x + w]
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    image = self.normalize(image)
    if self.cutout:
      # Reference utils.Cutout: centre uniform over the image, square clipped at borders.
      cy, cx = rng.integers(0, h), rng.integers(0, w)
      half = self.cutout // 2
      image[max(cy - half, 0):min(cy + half, h), max(cx - half, 0):min(cx + half, w)] = 0.0
    return {"image": image, "label": np.int32(example["label"])}

  def normalize(self, image: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) / 255.0 - np.asarray(self.mean, np.float32))
            / np.asarray(self.std, np.float32))


def make_batches(source, *, batch_size: int, seed: int, epoch: int, augment: Augment,
                 train: bool = True):
  """Batches of one epoch through Grain.

  Train: a fresh shuffle and augmentation per (seed, epoch), last partial batch dropped.
  Eval (train=False): in order, no augmentation, every example once.

  Yields:
    {"image": f32[B, H, W, C], "label": int32[B]}.
  """
  ds = grain.MapDataset.source(source)
  if train:
    ds = ds.shuffle(seed=seed * 100_003 + epoch)
    ds = ds.random_map(lambda ex, rng: augment(ex, rng), seed=seed * 100_003 + epoch + 1)
  else:
    ds = ds.map(lambda ex: {"image": augment.normalize(ex["image"]),
                            "label": np.int32(ex["label"])})
  yield from ds.batch(batch_size, drop_remainder=train)
