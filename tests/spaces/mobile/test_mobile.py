"""The MobileNetV2-block space: published networks and blocks counted against the
reference code, ProxylessNAS's binary gates against its estimator, the architecture JSON."""

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dnas import arch, optim, spaces
from dnas.spaces.base import ArchError
from dnas.spaces.mobile import PUBLISHED, MobileNet, layout
from dnas.spaces.mobile import ops as mobile_ops
from dnas.spaces.mobile.space import SPACE
from dnas.utils import count_params

# sum(p.numel()) of the reference models at 224x224, 1000 classes, run with torch here:
# mit-han-lab/proxylessnas (bf58b5c) on the official .config files, and FBNet's original
# blocks (maskrcnn-benchmark fbnet_builder.py, 57eec25) with the released models' layer
# choices (mobile-vision fbnet_modeldef_cls_fbnet.py); timm's fbnetc_100 also has 5,572,200.
PUBLISHED_PARAMS = {"proxyless_mobile": 4_080_512, "proxyless_cpu": 4_361_648,
                    "proxyless_gpu": 7_119_848, "FBNet_A": 4_321_464, "FBNet_B": 4_863_288,
                    "FBNet_C": 5_572_200}


def _params(build) -> int:
  return count_params(nnx.eval_shape(build))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_networks_have_the_references_parameter_counts(name):
  n = _params(lambda: MobileNet(PUBLISHED[name], 1000, 3, rngs=nnx.Rngs(0)))
  assert n == PUBLISHED_PARAMS[name]


def test_proxyless_supernet_has_the_references_weights():
  # SuperProxylessNASNets with imagenet_arch_search.py's defaults: 16,034,168 weights
  # (21 mixed edges, 15 of them with zero); the alphas are not counted.
  net = nnx.eval_shape(lambda: MobileNet(layout("proxyless"), 1000, 3, rngs=nnx.Rngs(0)))
  assert count_params(net) == 16_034_168
  ks = [len(m.ops) for m in arch.mixed_ops(net).values()]
  assert len(ks) == 21 and ks.count(7) == 15 and ks.count(6) == 6


# FBNet's 9 blocks at 64->64 stride 1 and 32->64 stride 2 (maskrcnn-benchmark's IRFBlock).
FBNET_BLOCKS = {"k3_e1": (9152, 3616), "k3_e1_g2": (5056, 2080), "k3_e3": (27200, 10592),
                "k3_e6": (54272, 21056), "k5_e1": (10176, 4128), "k5_e1_g2": (6080, 2592),
                "k5_e3": (30272, 12128), "k5_e6": (60416, 24128), "skip": (0, 2176)}


@pytest.mark.parametrize("op", mobile_ops.FBNET_OPS)
def test_fbnet_blocks_have_the_references_parameter_counts(op):
  style = mobile_ops.STYLES["fbnet"]
  for (c_in, c_out, stride), want in zip(((64, 64, 1), (32, 64, 2)), FBNET_BLOCKS[op]):
    n = _params(lambda: mobile_ops.make_block(op, c_in, c_out, stride, style,
                                              rngs=nnx.Rngs(0)))
    assert n == want, (op, c_in, c_out, stride)


def test_grouped_conv_and_shuffle_match_xla_grouped_conv():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 8)), jnp.float32)
  conv = mobile_ops.Conv1x1(8, 12, groups=2, rngs=nnx.Rngs(0))
  ref = jax.lax.conv_general_dilated(x, conv.kernel[...], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=2)
  chex.assert_trees_all_close(conv(x), ref, atol=1e-5)


def _mixed(k=4, c=3, seed=0):
  rngs = nnx.Rngs(seed)
  return arch.MixedOp([nnx.Conv(c, c, (3, 3), padding=1, rngs=rngs) for _ in range(k)],
                      rngs=rngs, alpha_scale=1.0)


def test_binary_gates_gradient_is_proxylessnas_estimator():
  # Two-path mode: value = the active op's output; dL/dalpha_i = sum_{j in pair} g_j
  # p_j (delta_ij - p_i), g_j = <op_j(x), dL/dy>, p the softmax over the pair
  # (mix_op.py set_arch_param_grad); the other alphas get no gradient.
  m = _mixed()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
  r = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)  # dL/dy
  for seed in range(4):
    key = jax.random.key(seed)
    graphdef, params, alpha = nnx.split(m, nnx.Param, arch.ArchParam)

    def loss(alpha):
      net = nnx.merge(graphdef, params, alpha, copy=True)
      return jnp.sum(net.run_paths(x, *arch.binary_gates(key, net.alpha[...])) * r)

    grad = jax.grad(loss)(alpha)["alpha"][...]
    logits = m.alpha[...]
    pair, gates = arch.binary_gates(key, logits)
    pair = [int(i) for i in pair]
    assert pair[0] != pair[1] and sorted(np.asarray(gates).tolist()) == [0.0, 1.0]
    outs = [m.ops[k](x) for k in range(len(m.ops))]
    active = pair[int(np.argmax(gates))]
    chex.assert_trees_all_close(loss(alpha), jnp.sum(outs[active] * r), rtol=1e-6)
    p = jax.nn.softmax(logits[np.asarray(pair)])
    g = [float(jnp.sum(outs[j] * r)) for j in pair]
    want = np.zeros(len(m.ops))
    for a, i in enumerate(pair):
      want[i] = sum(g[b] * float(p[b]) * ((a == b) - float(p[a])) for b in range(2))
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-6)


def test_binary_gates_draw_pairs_by_the_softmax():
  logits = jnp.log(jnp.asarray([0.6, 0.3, 0.1]))
  pairs = jax.vmap(lambda k: arch.binary_gates(k, logits)[0])(
      jax.random.split(jax.random.key(0), 4000))
  first = np.bincount(np.asarray(pairs[:, 0]), minlength=3) / 4000
  np.testing.assert_allclose(first, [0.6, 0.3, 0.1], atol=0.03)  # the first draw ~ p


def test_rescale_keeps_the_unsampled_probabilities():
  params = jnp.asarray([[0.3, -0.2, 0.5, 0.1]])
  updates = jnp.asarray([[0.0, 0.4, -0.7, 0.0]])  # Adam (b1 = 0): 0 where no gradient
  out, _ = optim.rescale_sampled_logits().update(updates, optax_empty(), params)
  before, after = jax.nn.softmax(params), jax.nn.softmax(params + out)
  np.testing.assert_allclose(after[0, [0, 3]], before[0, [0, 3]], rtol=1e-6)
  assert float(after[0, 1]) > float(before[0, 1]) and float(after[0, 2]) < float(before[0, 2])


def optax_empty():
  import optax  # pylint: disable=import-outside-toplevel
  return optax.EmptyState()


def _model(**kw):
  m = dict(family="proxyless", width_mult=0.5, stem_stride=1, widths=(16, 24), depths=(1, 2),
           strides=(1, 2), head=32, dropout=0.0, relaxation="softmax", gumbel_hard=False)
  m.update(kw)
  return ml_collections.ConfigDict(m)


def test_weight_step_runs_one_path_drawn_from_softmax():
  info_net = MobileNet(layout("proxyless", width_mult=0.5, stem_stride=1, widths=(16,),
                              depths=(2,), strides=(1,), head=32), 10, 1,
                       relaxation="binary", rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  info_net.eval()  # BN with running statistics: the paths are comparable
  key = jax.random.key(3)
  got = info_net(x, arch_key=key, arch_phase=1)
  # The same network with each layer fixed to the path drawn from its key.
  picks = [int(jax.random.categorical(jax.random.fold_in(key, i), m.alpha[...]))
           for i, m in enumerate(info_net.layers)]
  fixed = arch.discretize(info_net, {f"layers/{i}": k for i, k in enumerate(picks)})
  chex.assert_trees_all_close(got, fixed(x), atol=1e-5)


def test_space_derives_saves_and_loads_architectures(tmp_path):
  model = _model()
  net = SPACE.supernet(model, _info(), nnx.Rngs(0))
  alphas = nnx.state(net, arch.ArchParam)
  found = SPACE.derive(alphas, model)
  assert len(found.ops) == 3 and found.layout.family == "proxyless"
  spaces.save(SPACE, found, tmp_path / "g.json")
  assert spaces.load(SPACE, tmp_path / "g.json") == found
  groups = SPACE.alpha_groups(alphas, model)
  assert set(groups) == {"transition", "residual"} and groups["residual"][0].shape == (2, 7)
  assert groups["transition"][0].shape == (1, 6)
  assert spaces.load(SPACE, "FBNet_C") == PUBLISHED["FBNet_C"]
  final = SPACE.final(found, model, None, _info(), nnx.Rngs(0))
  logits, aux = SPACE.final_apply(final, jnp.zeros((2, 8, 8, 1)), key=jax.random.key(0))
  assert logits.shape == (2, 10) and aux is None


def _info():
  from dnas.data.pipeline import DatasetInfo  # pylint: disable=import-outside-toplevel
  return DatasetInfo("", (8, 8, 1), 10, (), ())


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("head"), "JSON object with family, stem"),
    (lambda d: d.update(family="mnas"), "family 'mnas' is unknown"),
    (lambda d: d["layers"][0].__setitem__(2, "9x9_MBConv3"), "op '9x9_MBConv3' is not one of"),
    (lambda d: d["layers"][4].__setitem__(2, "zero"), "op 'zero' is not one of"),
    (lambda d: d["layers"].append([16, 3]), "a layer is [C_out, stride, op]"),
])
def test_bad_architectures_are_one_line_errors(tmp_path, edit, message):
  d = SPACE.to_dict(PUBLISHED["proxyless_mobile"])
  edit(d)
  (tmp_path / "g.json").write_text(json.dumps(d))
  with pytest.raises(ArchError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
    spaces.load(SPACE, tmp_path / "g.json")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("relaxation", ["gumbel", "binary"])
def test_sampling_relaxations_give_alpha_gradients(relaxation):
  # FBNet's soft Gumbel-softmax over all candidates, ProxylessNAS's binary gates: both
  # reach every layer's alphas through the architecture loss.
  net = SPACE.supernet(_model(family="fbnet" if relaxation == "gumbel" else "proxyless",
                              relaxation=relaxation), _info(), nnx.Rngs(0))
  graphdef, params, alphas, rest = nnx.split(net, nnx.Param, arch.ArchParam, ...)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)), jnp.float32)
  inputs = (dict(arch_key=jax.random.key(0), tau=jnp.float32(5.0)) if relaxation == "gumbel"
            else dict(arch_key=jax.random.key(0), arch_phase=0))

  def loss(alphas):
    return jnp.sum(nnx.merge(graphdef, params, alphas, rest, copy=True)(x, **inputs) ** 2)

  grads = jax.jit(jax.grad(loss))(alphas)  # jitted: eager op-by-op takes a minute
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert len(norms) == 3 and all(n > 0 for n in norms)


def test_latency_table_and_expected_latency_of_the_space():
  # Each candidate block timed at its layer's shape; the expected latency is
  # differentiable in the alphas and predicts a discrete architecture of the layout.
  model = _model(family="fbnet", widths=(16, 24), depths=(1, 1), strides=(1, 2), head=32)
  table = SPACE.latency_profile(model, None, _info(), batch_size=4, dtype="float32",
                                repeats=2)
  assert len(table.entries) == 2 * len(mobile_ops.FBNET_OPS) + 1  # + the rest
  lm = SPACE.latency_model(table, model, None, _info())
  net = SPACE.supernet(model, _info(), nnx.Rngs(0))
  alphas = nnx.state(net, arch.ArchParam)
  grads = jax.grad(lm.expected)(alphas)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  found = SPACE.random_arch(np.random.default_rng(0), model, _info())
  assert lm.predict(found) >= lm.minimum() > 0
  with pytest.raises(ArchError, match="another"):
    lm.predict(PUBLISHED["FBNet_A"])
