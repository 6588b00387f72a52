"""NAS-Bench-201: parameter counts equal the reference's (xautodl, run here with torch CPU),
the benchmark's string format, the supernet cell, the discretizer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas.spaces import nb201
from dnas.spaces.base import ArchError
from dnas.utils import count_params

ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
        "|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|")
NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
MIXED = ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+"
         "|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")


# Counted with the reference (D-X-Y/AutoDL-Projects @ f46486e, xautodl TinyNetwork).
@pytest.mark.parametrize("arch,C,N,classes,want", [
    (ARCH, 16, 5, 10, 1_073_466), (ARCH, 16, 5, 100, 1_079_316), (ARCH, 8, 2, 120, 122_944),
    (ARCH, 4, 1, 10, 17_606), (NONE, 16, 5, 10, 73_306), (NONE, 8, 2, 120, 22_368),
    (MIXED, 16, 5, 10, 129_306), (MIXED, 16, 5, 100, 135_156), (MIXED, 4, 1, 10, 5_678)])
def test_tiny_network_param_counts(arch, C, N, classes, want):
  net = nnx.eval_shape(lambda: nb201.TinyNetwork(arch, C, N, classes, rngs=nnx.Rngs(0)))
  assert count_params(net) == want


# The reference's TinyNetworkDarts / TinyNetworkGDAS (equal counts), affine False and True.
@pytest.mark.parametrize("C,N,classes,affine,want", [
    (16, 5, 10, False, 1_692_826), (16, 5, 10, True, 1_699_546),
    (16, 5, 100, False, 1_698_676), (8, 2, 10, False, 181_362), (8, 2, 10, True, 182_706),
    (4, 1, 10, False, 25_390), (4, 1, 10, True, 25_726)])
def test_supernet_param_counts(C, N, classes, affine, want):
  net = nnx.eval_shape(lambda: nb201.Network(C, N, classes, affine=affine, rngs=nnx.Rngs(0)))
  assert count_params(net) == want
  assert net.alphas.get_value().shape == (6, 5)


def test_string_round_trip_and_index():
  arch = nb201.Structure.from_string(ARCH)
  assert str(arch) == ARCH and arch.tostr() == ARCH
  assert arch.nodes == ((("nor_conv_3x3", 0),), (("nor_conv_3x3", 0), ("nor_conv_3x3", 1)),
                        (("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_1x1", 2)))
  assert nb201.Structure.from_dict(arch.to_dict()) == arch
  assert arch.to_dict() == {"arch": ARCH}
  rng = np.random.default_rng(1)
  for index in [0, 15_624, *rng.integers(15_625, size=20)]:
    a = nb201.Structure.from_index(int(index))
    assert a.index == index and nb201.Structure.from_string(str(a)) == a
  assert len({nb201.Structure.from_index(i) for i in range(0, 15_625, 7)}) == len(range(0, 15_625, 7))
  assert nb201.Structure.from_string(NONE).parameter_free_ops() == 6
  assert arch.parameter_free_ops() == 1


@pytest.mark.parametrize("text,message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "expected 3 nodes joined by '+', got 2"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 2 must have 2 inputs, got 1"),
    ("|conv_9x9~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 1 input 0: unknown op 'conv_9x9'; valid: none, skip_connect"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 2: input 0 reads node 1; node 2 reads nodes 0..1 in order"),
    ("|nor_conv_3x3|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 1: 'nor_conv_3x3' is not op~input"),
    ("nor_conv_3x3~0+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 1 'nor_conv_3x3~0' must be |op~j|...| between bars"),
    ("|nor_conv_3x3~²|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
     "node 1: 'nor_conv_3x3~²' is not op~input"),
])
def test_malformed_strings_are_one_line_errors(text, message):
  with pytest.raises(ArchError) as e:
    nb201.Structure.from_string(text)
  assert message in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(ArchError, match="holds"):
    nb201.Structure.from_dict({"genotype": ARCH})


def test_derive_takes_each_edges_argmax_none_included():
  alphas = np.zeros((6, 5), np.float32)
  picks = [0, 3, 1, 4, 2, 3]  # none, nor_conv_3x3, skip, avg_pool, nor_conv_1x1, nor_conv_3x3
  alphas[np.arange(6), picks] = 1.0
  arch = nb201.derive(alphas)
  assert arch.ops == tuple(nb201.NAS_BENCH_201[k] for k in picks)
  assert str(arch) == ("|none~0|+|nor_conv_3x3~0|skip_connect~1|+"
                       "|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
  net = nb201.Network(4, 1, 10, rngs=nnx.Rngs(0))
  net.alphas.set_value(jnp.asarray(alphas))
  assert net.genotype() == arch


def test_supernet_cell_is_the_weighted_sum_of_its_edges():
  # Node i = sum_j sum_k w[(i,j), k] op_k(node_j): the cell computed by hand from its
  # edges' ops equals the cell (which runs each node's edges as one vmapped body).
  cell = nb201.SearchCell(3, 3, nb201.NAS_BENCH_201, False, True, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 5, 5, 3)), jnp.float32)
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((6, 5)), jnp.float32))
  graphdef, state = nnx.split(cell)

  @jax.jit
  def both(state, x, w, aux):
    got = nnx.merge(graphdef, state, copy=True)(x, w, aux)
    c = nnx.merge(graphdef, state, copy=True)
    nodes = [x]
    for i in range(1, 4):
      nodes.append(sum(sum(w[e, k] * op(nodes[j]) for k, op in enumerate(c.edges[e].ops))
                       + (0.0 if aux is None else aux * nodes[j])
                       for e, (ii, j) in enumerate(nb201.EDGES) if ii == i))
    return got, nodes[-1]

  for aux in (None, jnp.float32(0.7)):  # DARTS-'s auxiliary skip: + aux * x_j per edge
    got, want = both(state, x, w, aux)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_batch_norm_without_running_statistics_uses_the_batch_in_both_modes():
  # track_running_stats=False (NAS-Bench-201's search with BN=0): no running values, eval
  # mode normalises with the batch's statistics as train mode does.
  from dnas.layers import BatchNorm
  bn = BatchNorm(3, affine=False, track_running_stats=False)
  assert not nnx.state(bn, nnx.BatchStat)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 2, 2, 3)) * 3 + 1, jnp.float32)
  train = bn(x)
  bn.eval()
  chex.assert_trees_all_close(bn(x), train, atol=1e-6)
  np.testing.assert_allclose(np.asarray(train).mean(axis=(0, 1, 2)), 0, atol=1e-5)


def test_supernet_remat_gives_same_loss_and_gradients():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 8, 8, 3)), jnp.float32)
  results = []
  for remat in (False, True):
    net = nb201.Network(2, 1, 3, remat=remat, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(params, rest):
      return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(x) ** 2)

    results.append(jax.jit(jax.value_and_grad(loss))(params, rest))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
