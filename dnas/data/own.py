"""Your own images as a data set: an image-folder tree (`data.name=folder`) or an .npz
file (`data.name=npz`), both named by `data.data_dir`.

  DIR/train/<class>/*.png|jpg|jpeg|bmp|gif   the training images, one folder per class
  DIR/test/<class>/...                       optional; its classes a subset of train's

Classes are the train folder's subfolders in sorted order (torchvision's `ImageFolder`),
label i the i-th. Images are read with PIL: all grayscale -> one channel, else RGB. Images
of one size keep it; a tree of several sizes is resized (bilinear) to `data.image_size`
squared.

  FILE.npz: x_train, y_train[, x_test, y_test]

`x_*` are NHWC (or NHW: one channel) uint8 in 0..255, or float in [0, 1] (scaled to
0..255) or in [0, 255]; `y_*` integer labels 0..K-1 (K = max label + 1).

Splits follow the built-in sets: with a test split, validation is the test split (as the
reference's CIFAR runs report per-epoch test accuracy); without one, a seeded
class-stratified tenth of train (at least one image a class) is held out as both, as the
digits set holds out fixed splits. Mean and std are the train split's per channel, in
[0, 1]. Anything malformed is one `DataError` line naming the file and what is expected.
"""

import functools
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
HOLD_OUT = 0.1  # of each class, when no test split is given


class OwnDataError(ValueError):
  """Malformed own data; `dnas.data.pipeline` raises it as its DataError."""


def _classes(split_dir: str) -> list[str]:
  return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _image_files(class_dir: str) -> list[str]:
  return sorted(os.path.join(class_dir, f) for f in os.listdir(class_dir)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def _read_tree(split_dir: str, classes: list[str]) -> tuple[list, np.ndarray]:
  images, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    files = _image_files(class_dir)
    if not files:
      raise OwnDataError(f"{class_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    for path in files:
      try:
        with Image.open(path) as im:
          im.load()
          images.append((path, im.convert("L") if im.mode in ("L", "1", "I;16", "I")
                         else im.convert("RGB")))
      except (UnidentifiedImageError, OSError) as e:
        raise OwnDataError(f"{path}: not a readable image ({e})") from None
      labels.append(label)
  return images, np.asarray(labels, np.int32)


def load_folder(root: str, image_size: int) -> tuple[dict, dict]:
  """({"train": (uint8[n, H, W, C], int32[n]), "test": ... or absent}, {"classes": [...]})
  of an image-folder tree."""
  if not root:
    raise OwnDataError("data.name folder needs data.data_dir: a directory with train/<class>/"
                       "images (and optionally test/<class>/)")
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise OwnDataError(f"data.data_dir {root}: no train/ directory; expected "
                       f"{root}/train/<class>/*.png|jpg (and optionally {root}/test/<class>/)")
  classes = _classes(train_dir)
  if len(classes) < 2:
    raise OwnDataError(f"{train_dir}: needs a subfolder per class (at least 2), found "
                       f"{len(classes)}")
  test_dir = os.path.join(root, "test")
  splits = {"train": _read_tree(train_dir, classes)}
  if os.path.isdir(test_dir):
    extra = sorted(set(_classes(test_dir)) - set(classes))
    if extra:
      raise OwnDataError(f"{test_dir}: class {extra[0]!r} is not a class of {train_dir}")
    splits["test"] = _read_tree(test_dir, classes)
  every = [im for ims, _ in splits.values() for _, im in ims]
  gray = all(im.mode == "L" for im in every)
  sizes = {im.size for im in every}
  out = {}
  for split, (ims, labels) in splits.items():
    arrays = []
    for _, im in ims:
      im = im if gray else im.convert("RGB")
      if len(sizes) > 1:
        im = im.resize((image_size, image_size), Image.BILINEAR)
      a = np.asarray(im, np.uint8)
      arrays.append(a[..., None] if a.ndim == 2 else a)
    out[split] = (np.stack(arrays), labels)
  return out, {"classes": classes}


def _as_uint8(x: np.ndarray, key: str, path: str) -> np.ndarray:
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
    raise OwnDataError(f"{path}: {key} must be NHWC (or NHW) images with 1 or 3 channels, "
                       f"got shape {x.shape}")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise OwnDataError(f"{path}: {key} must be uint8 or float images, got {x.dtype}")
  lo, hi = float(np.min(x)), float(np.max(x))
  if lo < 0 or hi > 255 or not np.isfinite(hi):
    raise OwnDataError(f"{path}: {key} values must be in [0, 1] or [0, 255], got "
                       f"[{lo:.4g}, {hi:.4g}]")
  scale = 255.0 if hi <= 1.0 else 1.0
  return np.round(np.asarray(x, np.float64) * scale).astype(np.uint8)


def _labels(y: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) != n:
    raise OwnDataError(f"{path}: {key} must be {n} labels (one per image), got shape "
                       f"{y.shape}")
  if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
    raise OwnDataError(f"{path}: {key} must be integer labels >= 0, got {y.dtype}"
                       + (f" with minimum {y.min()}" if np.issubdtype(y.dtype, np.integer)
                          else ""))
  return y.astype(np.int32)


def load_npz(path: str) -> tuple[dict, dict]:
  """({"train": (uint8[n, H, W, C], int32[n]), "test": ... or absent}, {}) of an .npz."""
  if not path:
    raise OwnDataError("data.name npz needs data.data_dir: an .npz file with x_train, "
                       "y_train (and optionally x_test, y_test)")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise OwnDataError(f"data.data_dir {path}: not a readable .npz file ({e})") from None
  missing = [k for k in ("x_train", "y_train") if k not in arrays]
  if missing:
    raise OwnDataError(f"{path}: no {missing[0]}; expected x_train, y_train (and optionally "
                       f"x_test, y_test), found {', '.join(sorted(arrays)) or 'nothing'}")
  if ("x_test" in arrays) != ("y_test" in arrays):
    raise OwnDataError(f"{path}: x_test and y_test come together")
  out = {}
  for split in ("train", "test"):
    if f"x_{split}" in arrays:
      x = _as_uint8(arrays[f"x_{split}"], f"x_{split}", path)
      out[split] = (x, _labels(arrays[f"y_{split}"], f"y_{split}", path, len(x)))
  if "test" in out and out["test"][0].shape[1:] != out["train"][0].shape[1:]:
    raise OwnDataError(f"{path}: x_test images are {out['test'][0].shape[1:]}, x_train's "
                       f"{out['train'][0].shape[1:]}")
  return out, {}


def _hold_out(images, labels, seed: int = 0):
  """(train, held out): a seeded, class-stratified HOLD_OUT of each class held out."""
  rng = np.random.default_rng(seed)
  keep, held = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    k = max(1, int(round(HOLD_OUT * len(members)))) if len(members) > 1 else 0
    held += list(members[:k])
    keep += list(members[k:])
  keep, held = rng.permutation(np.asarray(keep, int)), rng.permutation(np.asarray(held, int))
  return (images[keep], labels[keep]), (images[held], labels[held])


@functools.cache
def load(name: str, data_dir: str, image_size: int):
  """(image shape, classes, mean, std, {"train", "validation", "test": (images, labels)})
  of own data `name` ("folder" or "npz") at `data_dir`."""
  if name == "folder":
    splits, _ = load_folder(data_dir, image_size)
  else:
    splits, _ = load_npz(data_dir)
  train = splits["train"]
  num_classes = int(train[1].max()) + 1
  if "test" in splits:
    test = splits["test"]
    if len(test[1]) and int(test[1].max()) >= num_classes:
      raise OwnDataError(f"{data_dir}: test label {int(test[1].max())} is not a train class "
                         f"(0..{num_classes - 1})")
  else:
    train, test = _hold_out(*train)
  if len(train[1]) == 0 or len(test[1]) == 0:
    raise OwnDataError(f"{data_dir}: too few images to hold out a test split")
  pixels = train[0].reshape(-1, train[0].shape[-1]).astype(np.float64) / 255.0
  mean = tuple(float(v) for v in pixels.mean(0))
  std = tuple(float(max(v, 1e-6)) for v in pixels.std(0))
  return (tuple(train[0].shape[1:]), num_classes, mean, std,
          {"train": train, "validation": test, "test": test})
