"""dnas: differentiable neural architecture search in JAX and Flax NNX."""

from dnas.arch import ArchParam, MixedOp, PartialMixedOp, init_alphas, mix

__version__ = "0.1.0"
