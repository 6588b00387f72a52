"""Supernet and final networks: parameter counts equal the reference's (quark0/darts,
counted with its count_parameters_in_MB rule), forward shapes, modes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas.arch import ArchParam
from dnas.spaces import darts
from dnas.utils import count_params

# (genotype, without auxiliary head, with it): NetworkCIFAR(C=36, 10, layers=20, auxiliary=True).
CIFAR_COUNTS = [("DARTS_V2", 3_349_342, 3_825_768), ("DARTS_V1", 3_169_414, 3_645_840),
                ("NASNet", 3_830_950, 4_288_944), ("AmoebaNet", 3_145_078, 3_603_072),
                # PC-DARTS's reference: the paper's 3.6M.
                ("PC_DARTS_cifar", 3_634_678, 4_111_104), ("PC_DARTS_image", 3_721_510, 4_197_936)]
# NetworkImageNet(C=48, 1000, layers=14, auxiliary=True).
IMAGENET_COUNTS = [("DARTS_V2", 4_718_752, 5_979_528), ("DARTS_V1", 4_510_432, 5_771_208),
                   ("PC_DARTS_image", 5_342_464, 6_603_240)]
# model_search.Network(C, 10, layers): weights only (the alphas are not parameters).
SUPERNET_COUNTS = [((16, 10, 8), 1_930_618), ((4, 10, 3), 72_854), ((4, 10, 2), 65_606)]
# PC-DARTS (yuhuixu1993/PC-DARTS, K=4, edge normalisation), counted the same way.
PC_SUPERNET_COUNTS = [((16, 10, 8), 299_578), ((8, 10, 3), 34_026), ((8, 10, 5), 66_586)]


@pytest.mark.parametrize("name,no_aux,total", CIFAR_COUNTS)
def test_network_cifar_param_counts(name, no_aux, total):
  net = darts.NetworkCIFAR(darts.GENOTYPES[name], 36, 10, 20, auxiliary=True, rngs=nnx.Rngs(0))
  assert count_params(net) == no_aux
  assert count_params(net, exclude=None) == total


@pytest.mark.parametrize("name,no_aux,total", IMAGENET_COUNTS)
def test_network_imagenet_param_counts(name, no_aux, total):
  net = darts.NetworkImageNet(darts.GENOTYPES[name], 48, 1000, 14, auxiliary=True,
                              rngs=nnx.Rngs(0))
  assert count_params(net) == no_aux
  assert count_params(net, exclude=None) == total


def test_small_final_network_counts():
  assert count_params(darts.NetworkCIFAR(darts.DARTS_V2, 16, 10, 8, rngs=nnx.Rngs(0))) == 246_106
  net = darts.NetworkCIFAR(darts.DARTS_V2, 8, 10, 5, auxiliary=True, rngs=nnx.Rngs(0))
  assert (count_params(net), count_params(net, None)) == (37_018, 456_100)
  assert count_params(darts.NetworkCIFAR(darts.DARTS_V1, 4, 10, 3, rngs=nnx.Rngs(0))) == 2_798


@pytest.mark.parametrize("args,count", SUPERNET_COUNTS)
def test_supernet_param_counts(args, count):
  net = darts.Network(*args, rngs=nnx.Rngs(0))
  assert count_params(net) == count
  alphas = nnx.state(net, ArchParam)
  assert [v.get_value().shape for _, v in nnx.to_flat_state(alphas)] == [(14, 8), (14, 8)]


@pytest.mark.parametrize("args,count", PC_SUPERNET_COUNTS)
def test_pc_darts_supernet_param_counts(args, count):
  net = darts.Network(*args, partial_channels=4, edge_normalization=True, rngs=nnx.Rngs(0))
  assert count_params(net) == count
  assert [a.get_value().shape for a in net.arch_parameters()] == [(14, 8), (14, 8), (14,), (14,)]


def test_pc_darts_supernet_forward_and_genotype():
  net = darts.Network(8, 10, 3, partial_channels=4, edge_normalization=True, rngs=nnx.Rngs(0))
  # Each edge's ops are built for C / K channels (a sep conv's first depthwise kernel).
  assert net.cells[0].ops[0].ops[4].block1.dw.kernel.get_value().shape[-1] == 8 // 4
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  graphdef, state = nnx.split(net)
  forward = lambda state, x: nnx.merge(graphdef, state)(x)
  assert jax.eval_shape(forward, state, x).shape == (2, 10)
  g = net.genotype()  # PC-DARTS's rule, betas included
  assert len(g.normal) == len(g.reduce) == 8 and all(op != "none" for op, _ in g.normal)
  with pytest.raises(ValueError, match="partial_channels=4 needs C divisible by 4"):
    darts.Network(6, 10, 3, partial_channels=4, rngs=nnx.Rngs(0))


def test_supernet_structure_and_forward():
  assert [c.reduction for c in darts.Network(2, 10, 5, rngs=nnx.Rngs(0)).cells] == [
      False, True, False, True, False]
  net = darts.Network(4, 10, 3, rngs=nnx.Rngs(0))
  assert len(net.cells[0].ops) == 14 and len(net.cells[0].ops[0].ops) == 8
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 3)), jnp.float32)
  graphdef, state = nnx.split(net)
  logits = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)  # one compile
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)
  g = net.genotype()
  assert len(g.normal) == 8 and g.normal_concat == (2, 3, 4, 5)


def test_final_network_modes_aux_and_drop_path():
  net = darts.NetworkCIFAR(darts.DARTS_V2, 4, 10, 5, auxiliary=True, drop_path_prob=0.0,
                           rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 32, 32, 3)), jnp.float32)
  logits, aux = net(x)
  chex.assert_shape([logits, aux], [(4, 10), (4, 10)])
  # Drop path with different keys changes training outputs; p=0 is a no-op.
  key = jax.random.key(0)
  a, _ = net(x, key=key, drop_path_prob=0.5)
  b, _ = net(x, key=jax.random.key(1), drop_path_prob=0.5)
  assert not np.allclose(a, b)
  c, _ = net(x, key=key, drop_path_prob=0.0)
  d, _ = net(x)
  chex.assert_trees_all_close(c, d, atol=1e-5)
  net.eval()
  e, aux = net(x, key=key, drop_path_prob=0.5)
  f, _ = net(x)
  assert aux is None
  chex.assert_trees_all_close(e, f)


def test_drop_path_scales_kept_samples():
  x = jnp.ones((1000, 1, 1, 2))
  y = darts.drop_path(x, 0.25, jax.random.key(3))
  kept = np.asarray(y[:, 0, 0, 0]) > 0
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.8


def test_aux_head_needs_large_enough_map():
  net = darts.NetworkCIFAR(darts.DARTS_V2, 4, 10, 3, auxiliary=True, in_channels=1,
                           rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="at least 5x5 after the second reduction, got 2x2"):
    net(jnp.zeros((2, 8, 8, 1)))


def test_supernet_remat_gives_same_loss_gradients_and_statistics():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 3)), jnp.float32)
  results = []
  for remat in (False, True):
    # Both kinds of custom-VJP op (depthwise conv, max pool) and a parameter-free one; the
    # other ops add compile time, not cases.
    net = darts.Network(2, 3, 2, steps=1, multiplier=1, remat=remat, rngs=nnx.Rngs(0),
                        primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3",
                                    "dil_conv_3x3"))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(params, rest):
      net = nnx.merge(graphdef, params, rest, copy=True)
      return jnp.sum(net(x) ** 2), nnx.state(net, nnx.BatchStat)

    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
    results.append((value, grads, stats))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
