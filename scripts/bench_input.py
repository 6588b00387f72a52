"""Images/s of the search input pipelines (CIFAR-10 and ImageNet), and whether they keep up.

python scripts/bench_input.py                       # synthetic encoded data, no download
python scripts/bench_input.py --data_dir=~/tensorflow_datasets --datasets=cifar10

Reads the weight split of a data set through `dnas.data.pipeline.make_batches` (Grain,
global shuffle, the search's augmentation, float32 batches) and reports images/s after
warm-up, for each `--workers` count.

Without prepared data the examples are synthetic but go through the same decoding as
prepared TFDS data: each image is stored encoded (PNG 32x32 for CIFAR-10, as TFDS stores
it; JPEG of `--imagenet_hw` for ImageNet, smooth content of roughly natural-photo file
size) and decoded per read by `tfds.features.Image.decode_example_np`, which is what a
`tfds.data_source` does.

A search step reads one batch from each split, so a pipeline feeding a step of t seconds
must deliver 2 B / t images/s. Each line reports `min_step_s`, the shortest step this
pipeline can feed, and, for `--step_s` (the step time measured on a device by
`scripts/bench_step.py`), whether it keeps up.
"""

import io
import json
import time

import numpy as np
from absl import app, flags

from dnas.data.pipeline import (SubsetSource, get_dataset, make_augment, make_batches,
                                search_splits, DatasetInfo, TFDS_DATASETS)

_DATASETS = flags.DEFINE_list("datasets", ["cifar10", "imagenet2012"], "Data sets.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Prepared TFDS data (empty: synthetic).")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker process counts.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size (the search's).")
_BATCHES = flags.DEFINE_integer("batches", 60, "Timed batches (after warm-up).")
_EXAMPLES = flags.DEFINE_integer("examples", 8192, "Synthetic examples per data set.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "ImageNet crop side.")
_IMAGENET_HW = flags.DEFINE_string("imagenet_hw", "375,500", "Synthetic ImageNet H,W.")
_STEP_S = flags.DEFINE_list(
    "step_s", ["cifar10=19.95"],
    "name=seconds: search step time on the target device (default: this machine's "
    "first-order CIFAR-10 step, BUILD_NOTES.md; no ImageNet step was measured).")


class EncodedSource:
  """Synthetic examples stored encoded and decoded per read, as prepared TFDS data is."""

  def __init__(self, n: int, hw: tuple[int, int], fmt: str, num_classes: int, seed: int = 0):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self.feature = tfds.features.Image(shape=(None, None, 3), encoding_format=fmt)
    rng = np.random.default_rng(seed)
    h, w = hw
    self.encoded, self.labels = [], rng.integers(0, num_classes, n)
    for _ in range(min(n, 256)):  # distinct images, reused cyclically
      # Smooth content: low-resolution noise upsampled, plus mild grain.
      low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
      img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.int16)
      img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
      self.encoded.append(buf.getvalue())
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    i = int(i)
    image = self.feature.decode_example_np(self.encoded[i % len(self.encoded)])
    return {"image": image, "label": np.int64(self.labels[i])}

  def mean_bytes(self) -> float:
    return float(np.mean([len(e) for e in self.encoded]))


def _source(name: str):
  """(info, weight split, description) of a prepared or synthetic data set."""
  if _DATA_DIR.value:
    info, splits = get_dataset(name, _DATA_DIR.value, _IMAGE_SIZE.value)
    return info, search_splits(splits["train"], 0.5)[0], "prepared"
  _, _, num_classes, (mean, std), kind = TFDS_DATASETS[name]
  if kind == "cifar":
    info = DatasetInfo(name, (32, 32, 3), num_classes, mean, std, kind)
    src = EncodedSource(_EXAMPLES.value, (32, 32), "png", num_classes)
  else:
    s = _IMAGE_SIZE.value
    info = DatasetInfo(name, (s, s, 3), num_classes, mean, std, kind)
    hw = tuple(int(v) for v in _IMAGENET_HW.value.split(","))
    src = EncodedSource(_EXAMPLES.value, hw, "jpeg", num_classes)
  desc = f"synthetic {src.feature.encoding_format}, {src.mean_bytes() / 1024:.1f} KiB/image"
  return info, SubsetSource(src, 0, len(src)), desc


def bench(name: str, workers: int, step_s: float | None) -> dict:
  info, source, desc = _source(name)
  augment = make_augment(info, crop_padding=4, flip=True)
  batch = _BATCH.value
  need = (_BATCHES.value + 2) * batch
  if len(source) < need:
    raise SystemExit(f"{name}: {len(source)} examples, {need} needed")
  it = make_batches(source, batch_size=batch, seed=0, epoch=0, augment=augment,
                    workers=workers)
  for _ in range(2):  # warm-up: worker start, first reads
    next(it)
  t = time.perf_counter()
  for _ in range(_BATCHES.value):
    b = next(it)
  elapsed = time.perf_counter() - t
  ips = _BATCHES.value * batch / elapsed
  out = dict(dataset=name, data=desc, workers=workers, batch=batch,
             image=list(b["image"].shape[1:]), images_per_s=round(ips, 1),
             min_step_s=float(f"{2 * batch / ips:.4g}"))  # 4 significant digits
  if step_s:
    out.update(step_s=step_s, needed_images_per_s=round(2 * batch / step_s, 1),
               keeps_up=bool(ips >= 2 * batch / step_s))
  return out


def main(argv):
  del argv
  step_s = dict(kv.split("=") for kv in _STEP_S.value)
  for name in _DATASETS.value:
    for workers in _WORKERS.value:
      s = step_s.get(name)
      print(json.dumps(bench(name, int(workers), float(s) if s else None)), flush=True)


if __name__ == "__main__":
  app.run(main)
