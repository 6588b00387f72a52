"""The DARTS search space (Liu et al., ICLR 2019): `from dnas.spaces import darts`."""

from dnas.spaces.darts.convert import torch_names
from dnas.spaces.darts.final import NetworkCIFAR, NetworkImageNet, drop_path
from dnas.spaces.darts.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, PC_DARTS_cifar,
                                         PC_DARTS_image, PCDARTS, AmoebaNet, Genotype,
                                         GenotypeError, NASNet, derive_genotype)
from dnas.spaces.darts.genotypes import load as load_genotype
from dnas.spaces.darts.genotypes import save as save_genotype
from dnas.spaces.darts.ops import OPS, PRIMITIVES, make_op
from dnas.spaces.darts.search import Cell, Network, num_edges
