"""MobileNetV2-block spaces: ProxylessNAS's mobile space and FBNet's, their published
networks (proxyless_mobile, proxyless_cpu, proxyless_gpu, FBNet_A, FBNet_B, FBNet_C) and
the space protocol (`config.space = "mobile"`)."""

from dnas.spaces.mobile.network import Layout, MobileArch, MobileNet, candidates, layout
from dnas.spaces.mobile.ops import FBNET_OPS, PROXYLESS_OPS
from dnas.spaces.mobile.published import (FBNet_A, FBNet_B, FBNet_C, PROXYLESS_CPU,
                                          PROXYLESS_GPU, PROXYLESS_MOBILE, PUBLISHED)
