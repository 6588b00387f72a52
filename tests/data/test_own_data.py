"""Your own images: image-folder trees and .npz files read as the built-in sets are, and
every malformed input one line."""

import numpy as np
import pytest
from PIL import Image

from dnas.data import own
from dnas.data.pipeline import DataError, dataset_info, get_dataset, make_augment, make_batches
from tests import cli_helpers


def _tree(root, classes=("cat", "ant", "bee"), per_class=5, size=(6, 5), mode="RGB",
          split="train", seed=0):
  rng = np.random.default_rng(seed)
  for c in classes:
    d = root / split / c
    d.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
  return root


def test_folder_classes_sorted_as_image_folder_held_out_and_normalised(tmp_path):
  _tree(tmp_path)
  shape, k, mean, std, splits = own.load("folder", str(tmp_path), 224)
  assert shape == (5, 6, 3) and k == 3  # H, W, C of PIL's width 6, height 5
  # torchvision's ImageFolder: sorted class names -> ant 0, bee 1, cat 2.
  _, info = own.load_folder(str(tmp_path), 224)
  assert info["classes"] == ["ant", "bee", "cat"]
  want = np.asarray(Image.open(tmp_path / "train" / "ant" / "0.png"))
  train, test = splits["train"], splits["test"]
  assert splits["validation"] is test and len(train[1]) == 12 and len(test[1]) == 3
  assert sorted(test[1].tolist()) == [0, 1, 2]  # one held out per class
  every = np.concatenate([train[0], test[0]])
  assert any(np.array_equal(x, want) for x in every[np.concatenate([train[1], test[1]]) == 0])
  pixels = train[0].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, pixels.std(0), rtol=1e-12)


def test_folder_with_test_split_grayscale_and_mixed_sizes(tmp_path):
  _tree(tmp_path, mode="L", size=(7, 7))
  _tree(tmp_path, classes=("bee",), per_class=2, mode="L", size=(9, 4), split="test")
  shape, k, _, _, splits = own.load("folder", str(tmp_path), 12)
  assert shape == (12, 12, 1) and k == 3  # several sizes: resized to image_size
  assert len(splits["train"][1]) == 15 and splits["test"][1].tolist() == [1, 1]
  assert splits["validation"] is splits["test"]


def test_npz_uint8_and_float_images_through_the_pipeline(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
  y = np.arange(40) % 4
  np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:8] / 255.0, y_test=y[:8])
  info, splits = get_dataset("npz", str(tmp_path / "a.npz"))
  assert info == dataset_info("npz", 224, str(tmp_path / "a.npz"))
  assert info.image_shape == (8, 8, 1) and info.num_classes == 4
  np.testing.assert_array_equal(splits["test"][3]["image"], x[3][..., None])  # [0, 1] -> 0..255
  batches = list(make_batches(splits["train"], batch_size=8, seed=0, epoch=0,
                              augment=make_augment(info, crop_padding=1)))
  assert len(batches) == 5 and batches[0]["image"].shape == (8, 8, 8, 1)
  assert batches[0]["image"].dtype == np.float32 and batches[0]["label"].dtype == np.int32


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no train/ directory"),
    (lambda p: (p / "train" / "a").mkdir(parents=True), "needs a subfolder per class"),
    (lambda p: [(p / "train" / c).mkdir(parents=True) for c in "ab"], "no images"),
    (lambda p: (_tree(p), _tree(p, classes=("dog",), split="test")), "'dog' is not a class"),
    (lambda p: (_tree(p), (p / "train" / "ant" / "9.png").write_text("x")),
     "9.png: not a readable image"),
])
def test_malformed_folder_is_one_line(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises(DataError, match=message):
    get_dataset("folder", str(tmp_path))


@pytest.mark.parametrize("arrays,message", [
    (dict(x_train=np.zeros((4, 8, 8, 3), np.uint8)), "no y_train"),
    (dict(x_train=np.zeros((4, 8), np.uint8), y_train=np.zeros(4, int)), "NHWC"),
    (dict(x_train=np.zeros((4, 8, 8, 2), np.uint8), y_train=np.zeros(4, int)), "1 or 3"),
    (dict(x_train=np.full((4, 8, 8), 300.0), y_train=np.zeros(4, int)), r"\[0, 1\] or \[0, 255\]"),
    (dict(x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(3, int)), "4 labels"),
    (dict(x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.full(4, 0.5)), "integer labels"),
    (dict(x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, int),
          x_test=np.zeros((2, 8, 8), np.uint8)), "come together"),
])
def test_malformed_npz_is_one_line(tmp_path, arrays, message):
  np.savez(tmp_path / "d.npz", **arrays)
  with pytest.raises(DataError, match=message):
    get_dataset("npz", str(tmp_path / "d.npz"))
  with pytest.raises(DataError, match="not a readable .npz"):
    get_dataset("npz", str(tmp_path / "missing.npz"))


def test_bad_own_data_from_the_cli_exits_2_with_one_line(tmp_path):
  # A search on good own data runs in tests/test_learning.py (and learns).
  np.savez(tmp_path / "bad.npz", x_train=np.zeros((8, 8, 8, 3), np.uint8))
  out = cli_helpers.run("dnas.search", *cli_helpers.FAST, "--config.data.name=npz",
                        f"--config.data.data_dir={tmp_path / 'bad.npz'}",
                        f"--workdir={tmp_path / 'bad'}")
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"dnas: error: {tmp_path / 'bad.npz'}: no y_train; expected x_train, y_train (and "
      f"optionally x_test, y_test), found x_train"]
