"""Per-example augmentation in NumPy (runs in Grain workers), uint8 HWC in, f32 HWC out.

`Augment`: the DARTS CIFAR recipe (reference utils._data_transforms_cifar10): random crop
after zero padding, horizontal flip, normalisation, then cutout.
`ImageNetAugment`: the reference train_imagenet.py recipe: random-resized crop, flip,
colour jitter (0.4, 0.4, 0.4, 0.2); evaluation resizes the short side to size / 0.875
and takes the centre crop.
"""

import dataclasses
import math

import numpy as np
from PIL import Image


def _normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 or [0, 1] float image -> (x - mean) / std, f32."""
  x = image.astype(np.float32)
  if image.dtype == np.uint8:
    x = x / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass(frozen=True)
class Augment:
  """DARTS augmentation: pad-and-crop, optional flip, normalisation, cutout (applied in
  normalised space, as the reference's Cutout after Normalize)."""
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

  def evaluate(self, example):
    return {"image": self.normalize(example["image"]), "label": np.int32(example["label"])}

  def normalize(self, image: np.ndarray) -> np.ndarray:
    return _normalize(image, self.mean, self.std)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _gray(x: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma, as torchvision's rgb_to_grayscale; f32[H, W, 3] -> f32[H, W, 1]."""
  return (0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:])


def _shift_hue(x: np.ndarray, shift: float) -> np.ndarray:
  """Rotates hue by `shift` turns (torchvision adjust_hue), f32 RGB in [0, 1]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc, minc = x.max(-1), x.min(-1)
  v, delta = maxc, maxc - minc
  s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
  d = np.maximum(delta, 1e-12)
  h = np.where(maxc == r, (g - b) / d % 6, np.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
  h = np.where(delta > 0, h / 6.0, 0.0)
  h = (h + shift) % 1.0
  i = np.floor(h * 6).astype(np.int32) % 6
  f = h * 6 - np.floor(h * 6)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  out = np.zeros_like(x)
  for k, (rr, gg, bb) in enumerate(choices):
    m = i == k
    out[..., 0][m], out[..., 1][m], out[..., 2][m] = rr[m], gg[m], bb[m]
  return out


@dataclasses.dataclass(frozen=True)
class ImageNetAugment:
  """ImageNet augmentation (reference train_imagenet.py, torchvision semantics)."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  size: int = 224
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)  # b, c, s, hue

  def _crop_box(self, h, w, rng):
    """torchvision RandomResizedCrop.get_params: 10 tries, then the centre fallback."""
    area = h * w
    log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
    for _ in range(10):
      target = area * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
      if 0 < cw <= w and 0 < ch <= h:
        return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < self.ratio[0]:
      cw, ch = w, int(round(w / self.ratio[0]))
    elif in_ratio > self.ratio[1]:
      ch, cw = h, int(round(h * self.ratio[1]))
    else:
      cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw

  def __call__(self, example, rng: np.random.Generator):
    image = example["image"]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, -1)
    y, x, ch, cw = self._crop_box(image.shape[0], image.shape[1], rng)
    image = _resize(np.ascontiguousarray(image[y:y + ch, x:x + cw]), self.size, self.size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    x = image.astype(np.float32) / 255.0
    b, c, s, hue = self.jitter
    for k in rng.permutation(4):  # torchvision ColorJitter: the four in random order
      if k == 0:
        x = np.clip(x * rng.uniform(max(0, 1 - b), 1 + b), 0, 1)
      elif k == 1:
        x = np.clip(_blend(x, _gray(x).mean(), rng.uniform(max(0, 1 - c), 1 + c)), 0, 1)
      elif k == 2:
        x = np.clip(_blend(x, _gray(x), rng.uniform(max(0, 1 - s), 1 + s)), 0, 1)
      else:
        x = _shift_hue(x, rng.uniform(-hue, hue))
    return {"image": _normalize(x, self.mean, self.std), "label": np.int32(example["label"])}

  def evaluate(self, example):
    """Resize the short side to size / 0.875 (256 for 224), centre crop `size`."""
    image = example["image"]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, -1)
    h, w = image.shape[:2]
    short = int(round(self.size / 0.875))
    nh, nw = (short, max(short, round(w * short / h))) if h <= w else (
        max(short, round(h * short / w)), short)
    image = _resize(np.ascontiguousarray(image), nh, nw)
    y, x = (nh - self.size) // 2, (nw - self.size) // 2
    image = image[y:y + self.size, x:x + self.size]
    return {"image": _normalize(image, self.mean, self.std), "label": np.int32(example["label"])}


def _blend(x, other, factor):
  """torchvision _blend: factor * x + (1 - factor) * other."""
  return factor * x + (1 - factor) * other
