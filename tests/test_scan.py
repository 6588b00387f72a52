"""Stacks of identical layers as one `lax.scan` (`dnas.layers.scan_layers`): which layers
are grouped, and the scanned networks give the loop's values, gradients and BatchNorm
statistics (float64, in a subprocess because x64 is process-wide)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import layers
from dnas.spaces.darts.search import Network as DartsNetwork
from dnas.spaces.nb201.network import TinyNetwork

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|skip_connect~2|"


def test_identical_runs_groups_equal_neighbours_and_ends_at_boundaries():
  rngs = nnx.Rngs(0)
  mods = [nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs), nnx.Linear(3, 4, rngs=rngs),
          nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs),
          nnx.Linear(4, 4, use_bias=False, rngs=rngs)]
  assert layers.identical_runs(mods) == [range(0, 2), range(2, 3), range(3, 6), range(6, 7)]
  assert layers.identical_runs(mods, boundaries=(3,)) == [
      range(0, 2), range(2, 3), range(3, 4), range(4, 6), range(6, 7)]
  singles = [range(i, i + 1) for i in range(7)]
  assert layers.identical_runs(mods, scan=False) == singles
  with layers.unrolled():
    assert layers.identical_runs(mods) == singles
  assert layers.identical_runs([]) == []


def test_tiny_network_traces_one_scan_per_stage_unless_unrolled():
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)

  def scans(scan_cells=True):
    net = TinyNetwork(ARCH, 4, 3, 10, in_channels=1, scan_cells=scan_cells, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, x).jaxpr
    return sum(e.primitive.name == "scan" for e in jaxpr.eqns)
  assert scans() == 3  # three stages of 3 cells
  with layers.unrolled():
    assert scans() == 0
  assert scans(scan_cells=False) == 0


def test_darts_supernet_scans_its_edges_unless_unrolled_or_sampled():
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)

  def scans(scan_edges=True, **kwargs):
    net = DartsNetwork(4, 3, 3, in_channels=1, primitives=("none", "skip_connect",
                                                            "max_pool_3x3"),
                       scan_edges=scan_edges, relaxation="gumbel", gumbel_hard=True,
                       rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x, **kwargs))(
        state, x).jaxpr
    return sum(e.primitive.name == "scan" for e in jaxpr.eqns)
  # Cells normal, reduction, reduction: a normal cell's 14 edges are one scan, a
  # reduction cell's 6 edges between nodes another.
  assert scans() == 3
  with layers.unrolled():
    assert scans() == 0
  assert scans(scan_edges=False) == 0
  # A one-hot sample runs each edge's own op (a switch per edge), not a scan.
  assert scans(arch_key=jax.random.key(0), tau=jnp.asarray(1.0)) == 0


def test_cells_without_variables_scan():
  # Skips, pools and zeros only: nothing to stack, the scan still runs N times.
  arch = "|skip_connect~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  outs = []
  for scan in (True, False):
    net = TinyNetwork(arch, 4, 2, 10, in_channels=1, scan_cells=scan, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    outs.append(jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from dnas.spaces.darts.final import NetworkCIFAR
    from dnas.spaces.darts.genotypes import Genotype
    from dnas.spaces.darts.search import Network as DartsNetwork
    from dnas.spaces.nb201.network import Network, TinyNetwork
    assert jax.config.jax_enable_x64
    ARCH = %r
    OPS = ("none", "skip_connect", "nor_conv_3x3", "avg_pool_3x3")  # 1x1 is the 3x3's code

    def f64(net):
      g, st = nnx.split(net)
      return nnx.merge(g, jax.tree.map(lambda v: v.astype(jnp.float64)
                                       if jnp.issubdtype(v.dtype, jnp.floating) else v, st))

    def compare(name, make, call, shape):
      x = jnp.asarray(np.random.default_rng(0).standard_normal(shape))
      out, loops = {}, {}
      for scan in (True, False):
        net = f64(make(scan))
        graphdef, state = nnx.split(net)

        @jax.jit
        def loss_and_grad(state, x):
          def loss(state):
            net = nnx.merge(graphdef, state)
            return jnp.sum(call(net, x) ** 2), nnx.state(net, nnx.BatchStat)
          return jax.value_and_grad(loss, has_aux=True)(state)
        loops[scan] = loss_and_grad.lower(state, x).as_text().count("stablehlo.while")
        out[scan] = state, loss_and_grad(state, x)
      assert loops[True] > loops[False], (name, loops)  # the scan is there, or not
      (s1, ((l1, b1), g1)), (s0, ((l0, b0), g0)) = out[True], out[False]
      # The scan changes neither the variables' tree (checkpoints) nor any number.
      assert jax.tree.structure(s1) == jax.tree.structure(s0), name
      gap = lambda a, b: max([float(jnp.max(jnp.abs(u - v))) for u, v in
                              zip(jax.tree.leaves(a), jax.tree.leaves(b))] or [0.0])
      assert abs(float(l1 - l0)) <= 1e-10 * abs(float(l0)), (name, l1, l0)
      assert gap(g1, g0) <= 1e-10, (name, gap(g1, g0))
      assert gap(b1, b0) <= 1e-10, (name, gap(b1, b0))
      assert float(jnp.max(jnp.abs(jax.tree.leaves(g1)[0]))) > 0, name
      print(name, "ok")

    # 7 cells, the stem as wide as a cell's output (stem_multiplier=4): cells 0-1 are
    # identical; drop path keys per cell. A cell of few kernels (a separable conv, pools,
    # skips) keeps the compile short.
    cell = [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
            ("avg_pool_3x3", 1), ("skip_connect", 3), ("skip_connect", 0), ("max_pool_3x3", 4)]
    genotype = Genotype(cell, range(2, 6), cell, range(2, 6))
    compare("NetworkCIFAR",
            lambda scan: NetworkCIFAR(genotype, 2, 3, 7, drop_path_prob=0.3, in_channels=1,
                                      stem_multiplier=4, scan_cells=scan, rngs=nnx.Rngs(0)),
            lambda net, x: net(x, key=jax.random.key(1))[0], (2, 8, 8, 1))
    compare("TinyNetwork",
            lambda scan: TinyNetwork(ARCH, 3, 2, 3, in_channels=1, scan_cells=scan,
                                     rngs=nnx.Rngs(0)),
            lambda net, x: net(x), (2, 8, 8, 1))
    compare("nb201.Network",
            lambda scan: Network(3, 2, 3, in_channels=1, primitives=OPS,
                                 track_running_stats=True, scan_cells=scan, rngs=nnx.Rngs(0)),
            lambda net, x: net(x, aux_skip=jnp.asarray(0.3)), (2, 8, 8, 1))
    compare("nb201.Network remat gdas",
            lambda scan: Network(3, 2, 3, in_channels=1, primitives=OPS, remat=True,
                                 relaxation="gumbel", gumbel_hard=True, scan_cells=scan,
                                 rngs=nnx.Rngs(0)),
            lambda net, x: net(x, arch_key=jax.random.key(3), tau=jnp.asarray(1.0)),
            (2, 8, 8, 1))
    # The DARTS supernet's edges as scans: normal and reduction cells, PC-DARTS's partial
    # channels and edge weights, DARTS-'s skips (remat wraps a cell as for nb201 above).
    compare("darts.Network",
            lambda scan: DartsNetwork(4, 3, 3, in_channels=1, primitives=(
                "none", "max_pool_3x3", "skip_connect", "dil_conv_3x3"), partial_channels=2,
                edge_normalization=True, auxiliary_skip=True, scan_edges=scan,
                rngs=nnx.Rngs(0)),
            lambda net, x: net(x, aux_skip=jnp.asarray(0.3)), (2, 8, 8, 1))
    """ % ARCH)


def test_scanned_networks_equal_the_loop_in_float64():
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["NetworkCIFAR", "ok", "TinyNetwork", "ok", "nb201.Network",
                                "ok", "nb201.Network", "remat", "gdas", "ok", "darts.Network",
                                "ok"]
