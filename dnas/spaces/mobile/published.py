"""The published networks of the two spaces, as `MobileArch`s (`dnas.train --genotype=NAME`).

ProxylessNAS's mobile, CPU and GPU networks: the official `.config` files that
mit-han-lab/proxylessnas's model zoo downloads (their widths are their own, not a width
multiple of the search space's). FBNet-A, -B, -C: the layer choices of the released
models (facebookresearch/mobile-vision, `fbnet_modeldef_cls_fbnet.py`) in FBNet's
original blocks (maskrcnn-benchmark `fbnet_builder.py`). Parameter counts at 224x224
and 1000 classes equal the reference code's, counted by running it
(tests/spaces/mobile/test_mobile.py; BUILD_NOTES.md, "Mobile spaces").
"""

from dnas.spaces.mobile.network import FBNET, Layout, MobileArch, _stages

Z = "zero"


def _proxyless(stem, first, widths, head, ops) -> MobileArch:
  layers = _stages(widths, (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1))
  return MobileArch(Layout("proxyless", stem, 2, first, layers, head), tuple(ops))


def _mb(k, e):
  return f"{k}x{k}_MBConv{e}"


PROXYLESS_MOBILE = _proxyless(32, 16, (32, 40, 80, 96, 192, 320), 1280, [
    _mb(5, 3), _mb(3, 3), Z, Z,
    _mb(7, 3), _mb(3, 3), _mb(5, 3), _mb(5, 3),
    _mb(7, 6), _mb(5, 3), _mb(5, 3), _mb(5, 3),
    _mb(5, 6), _mb(5, 3), _mb(5, 3), _mb(5, 3),
    _mb(7, 6), _mb(7, 6), _mb(7, 3), _mb(7, 3),
    _mb(7, 6)])
PROXYLESS_CPU = _proxyless(40, 24, (32, 48, 88, 104, 216, 360), 1432, [
    _mb(3, 6), _mb(3, 3), _mb(3, 3), _mb(3, 3),
    _mb(3, 6), _mb(3, 3), _mb(3, 3), _mb(5, 3),
    _mb(3, 6), Z, Z, _mb(3, 3),
    _mb(5, 6), _mb(3, 3), _mb(3, 3), _mb(3, 3),
    _mb(5, 6), _mb(5, 3), _mb(5, 3), _mb(3, 3),
    _mb(5, 6)])
PROXYLESS_GPU = _proxyless(40, 24, (32, 56, 112, 128, 256, 432), 1728, [
    _mb(5, 3), Z, Z, Z,
    _mb(7, 3), Z, Z, _mb(3, 3),
    _mb(7, 6), Z, Z, _mb(5, 3),
    _mb(5, 6), Z, _mb(3, 3), _mb(5, 3),
    _mb(7, 6), _mb(7, 6), _mb(7, 6), _mb(5, 6),
    _mb(7, 6)])


def _fbnet(head, ops) -> MobileArch:
  layers = _stages(FBNET["widths"], FBNET["depths"], FBNET["strides"])
  return MobileArch(Layout("fbnet", FBNET["stem"], 2, 0, layers, head), tuple(ops.split()))


FBNet_A = _fbnet(1504, "skip k3_e3 k3_e1 skip skip k5_e6 k3_e3 k5_e1 k3_e3 k5_e6 k5_e3 "
                       "k5_e1_g2 k5_e6 k3_e6 k5_e1_g2 k5_e3 k3_e1_g2 k5_e6 k5_e6 k5_e3 k5_e6 "
                       "k5_e6")
FBNet_B = _fbnet(1984, "k3_e1 k3_e6 k5_e1 k3_e1 k3_e1 k5_e6 k5_e3 k3_e6 k5_e6 k5_e6 k5_e6 "
                       "skip k5_e3 k5_e6 k3_e1 k5_e1 k5_e3 k5_e6 k5_e1 k5_e6 k5_e6 k3_e6")
FBNet_C = _fbnet(1984, "k3_e1 k3_e6 skip k3_e1 k3_e1 k5_e6 k5_e3 k5_e6 k3_e6 k5_e6 k5_e3 "
                       "k5_e6 k5_e6 k5_e6 k5_e6 k5_e6 k5_e3 k5_e6 k5_e6 k5_e6 k5_e6 k3_e6")

PUBLISHED = {"proxyless_mobile": PROXYLESS_MOBILE, "proxyless_cpu": PROXYLESS_CPU,
             "proxyless_gpu": PROXYLESS_GPU, "FBNet_A": FBNet_A, "FBNet_B": FBNet_B,
             "FBNet_C": FBNet_C}
