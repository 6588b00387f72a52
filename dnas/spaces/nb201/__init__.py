"""NAS-Bench-201 (Dong & Yang, ICLR 2020): its five ops, architectures in the benchmark's
string format, the final `TinyNetwork` and the supernet `Network`; `config.space = "nb201"`.

  from dnas.spaces import nb201
  arch = nb201.Structure.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                                     "|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
  net = nb201.TinyNetwork(arch, C=16, N=5, num_classes=10, rngs=nnx.Rngs(0))
"""

from dnas.spaces.nb201.convert import torch_name
from dnas.spaces.nb201.network import InferCell, Network, SearchCell, TinyNetwork
from dnas.spaces.nb201.ops import NAS_BENCH_201, PRIMITIVES, ResNetBasicblock, make_op
from dnas.spaces.nb201.structure import EDGES, Structure, derive, random_structure
