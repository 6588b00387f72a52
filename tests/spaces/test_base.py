"""The search-space protocol: the registry, architecture files and published names, and
the generic MixedOp space's JSON; cluster detection (which multi-host runs rely on)."""

import json

import numpy as np
import pytest
from flax import nnx

from dnas import arch, config as config_lib, parallel, spaces
from dnas.configs import digits
from dnas.spaces import darts
from dnas.spaces.mixed_op import MixedOpSpace


def test_registry_and_published_names(tmp_path):
  space = spaces.get("darts")
  assert spaces.load(space, "DARTS_V2") == darts.DARTS_V2
  spaces.save(space, darts.DARTS_V1, tmp_path / "g.json")
  assert spaces.load(space, tmp_path / "g.json") == darts.DARTS_V1
  with pytest.raises(ValueError, match="space 'nb101' is unknown; valid: darts"):
    spaces.get("nb101")
  with pytest.raises(spaces.ArchError, match="cannot read architecture file DARTS_V9: .*"
                                             r"published name \(NASNet, AmoebaNet"):
    spaces.load(space, "DARTS_V9")
  (tmp_path / "bad.json").write_text("not json")
  with pytest.raises(spaces.ArchError, match="bad.json: not JSON"):
    spaces.load(space, tmp_path / "bad.json")


def test_darts_space_derives_what_the_supernet_does():
  config = digits.get_config()
  config.model.update(C=4, layers=2, steps=2, multiplier=2)
  space = spaces.get("darts")
  from dnas.data.pipeline import dataset_info
  model = config_lib.space_section(config)
  net = nnx.eval_shape(lambda: space.supernet(model, dataset_info("digits"), nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  for a in (net.alphas_normal, net.alphas_reduce):
    a.set_value(rng.standard_normal(a.get_value().shape).astype(np.float32))
  alphas = nnx.state(net, arch.ArchParam)
  assert space.derive(alphas, model) == darts.derive_genotype(
      net.alphas_normal.get_value(), net.alphas_reduce.get_value(), steps=2, multiplier=2)
  groups = space.alpha_groups(alphas, model)
  assert set(groups) == {"normal", "reduce"} and groups["normal"][1] == darts.PRIMITIVES


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.a = arch.MixedOp([nnx.Linear(2, 2, rngs=rngs) for _ in range(3)], rngs=rngs)
    self.b = arch.MixedOp([nnx.Linear(2, 2, rngs=rngs) for _ in range(2)], rngs=rngs)

  def __call__(self, x):
    return self.b(self.a(x))


def test_mixed_op_space_argmax_and_json():
  space = MixedOpSpace("test_net", lambda model, info, rngs: _Net(rngs))
  net = _Net(nnx.Rngs(0))
  net.a.alpha.set_value(np.array([0.0, 2.0, 1.0], np.float32))
  net.b.alpha.set_value(np.array([1.0, -1.0], np.float32))
  choices = space.derive(nnx.state(net, arch.ArchParam), None)
  assert choices == {"a": 1, "b": 0} == arch.choices(net)
  d = json.loads(json.dumps(space.to_dict(choices)))
  assert space.from_dict(d) == choices
  final = space.final(choices, None, None, None, nnx.Rngs(1))
  assert not arch.mixed_ops(final)
  for bad, message in (({"a": 1}, "choices"), ({"choices": {"a": -1}}, "op index >= 0"),
                       ({"choices": {"a": True}}, "op index >= 0")):
    with pytest.raises(spaces.ArchError, match=message):
      space.from_dict(bad)
  with pytest.raises(spaces.ArchError, match="has 3 ops, got choice 7"):
    space.final({"a": 7}, None, None, None, nnx.Rngs(1))


@pytest.mark.parametrize("env,several", [
    ({}, False), ({"SLURM_JOB_ID": "7"}, False),  # a lone python inside an sbatch allocation
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False), ({"SLURM_NTASKS": "4"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False), ({"TPU_WORKER_HOSTNAMES": "a,b"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True), ({"JAX_COORDINATOR_ADDRESS": "h:1"}, True)])
def test_multi_host_only_when_the_environment_has_several_processes(env, several):
  assert parallel.several_processes(env) is several
