"""Discretizer golden cases and the genotype JSON format."""

import json

import numpy as np
import pytest

from dnas.spaces import darts
from dnas.spaces.darts import PRIMITIVES, Genotype, GenotypeError, derive_genotype

P = {name: k for k, name in enumerate(PRIMITIVES)}


def _alphas(entries, E=14, K=8):
  """Logits that are 0 except the given (edge, op) -> value entries."""
  a = np.zeros((E, K), np.float32)
  for (e, op), v in entries.items():
    a[e, P[op]] = v
  return a


def test_derive_genotype_known_cell():
  # Node 0 reads edges 0,1; node 1 edges 2..4; node 2 edges 5..8; node 3 edges 9..13.
  normal = _alphas({(0, "sep_conv_3x3"): 3, (1, "skip_connect"): 2,
                    (2, "dil_conv_5x5"): 1, (3, "avg_pool_3x3"): 0.5, (4, "max_pool_3x3"): 4,
                    (7, "sep_conv_5x5"): 2, (8, "dil_conv_3x3"): 3,
                    (9, "sep_conv_3x3"): 1, (13, "skip_connect"): 5})
  reduce = _alphas({(0, "max_pool_3x3"): 1, (1, "max_pool_3x3"): 1})
  g = derive_genotype(normal, reduce)
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1),
                      ("max_pool_3x3", 2), ("dil_conv_5x5", 0),
                      ("dil_conv_3x3", 3), ("sep_conv_5x5", 2),
                      ("skip_connect", 4), ("sep_conv_3x3", 0))
  assert g.normal_concat == (2, 3, 4, 5)
  # Ties: the lower input wins among edges, the lowest op index within an edge.
  assert g.reduce[:2] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
  assert g.reduce[2:4] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))


def test_none_is_ignored_even_when_strongest():
  # Edge 1 is dominated by `none`, but ranking uses the strongest *other* op.
  normal = _alphas({(0, "none"): 10, (0, "sep_conv_3x3"): 1, (1, "none"): 10,
                    (1, "dil_conv_3x3"): 2})
  g = derive_genotype(normal, _alphas({}))
  # softmax(edge 0): none dominates, sep_conv_3x3 second; same on edge 1 for dil_conv_3x3.
  assert g.normal[:2] == (("dil_conv_3x3", 1), ("sep_conv_3x3", 0))
  assert all(op != "none" for op, _ in g.normal + g.reduce)


def test_pc_darts_edge_weights_decide_edges():
  # Node 1 reads edges 2, 3, 4 (inputs 0, 1, 2). By alpha alone inputs 0 and 1 win; a
  # large beta on edge 4 makes softmax(alpha) * node_softmax(beta) pick input 2 first.
  normal = _alphas({(2, "sep_conv_3x3"): 2, (3, "dil_conv_3x3"): 1.5, (4, "max_pool_3x3"): 1})
  betas = np.zeros(14, np.float32)
  betas[4] = 3
  assert derive_genotype(normal, _alphas({})).normal[2:4] == (
      ("sep_conv_3x3", 0), ("dil_conv_3x3", 1))
  g = derive_genotype(normal, _alphas({}), betas_normal=betas, betas_reduce=np.zeros(14))
  assert g.normal[2:4] == (("max_pool_3x3", 2), ("sep_conv_3x3", 0))
  with pytest.raises(ValueError, match=r"betas_normal has shape \(13,\), expected \(14,\)"):
    derive_genotype(normal, _alphas({}), betas_normal=betas[:13])


def test_derive_checks_shapes():
  with pytest.raises(ValueError, match=r"alphas_normal has shape \(13, 8\)"):
    derive_genotype(np.zeros((13, 8)), np.zeros((14, 8)))


@pytest.mark.parametrize("g", list(darts.GENOTYPES.values()))
def test_json_round_trip(g, tmp_path):
  path = tmp_path / "g.json"
  darts.save_genotype(g, path)
  assert darts.load_genotype(path) == g
  assert Genotype.from_json(g.to_json()) == g


def _write(tmp_path, obj):
  path = tmp_path / "bad.json"
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["normal"].__setitem__(0, ["conv_9x9", 0]), r"normal edge 0: unknown op 'conv_9x9'"),
    (lambda d: d["reduce"].__setitem__(1, ["max_pool_3x3", 2]),
     r"reduce edge 1: node 2 cannot read state 2; allowed inputs are 0..1"),
    (lambda d: d["normal"].pop(), r"normal: needs 2 edges per node .* got 7"),
    (lambda d: d["normal_concat"].append(9), r"normal_concat: \[2, 3, 4, 5, 9\] must be distinct"),
    (lambda d: d.pop("reduce"), r"missing \['reduce'\]"),
    (lambda d: d["normal"].__setitem__(0, "sep_conv_3x3"), r"expected \[op_name, input_index\]"),
])
def test_malformed_genotype_files(tmp_path, mutate, message):
  d = darts.DARTS_V2.to_dict()
  mutate(d)
  with pytest.raises(GenotypeError, match=message):
    darts.load_genotype(_write(tmp_path, d))


def test_not_json(tmp_path):
  with pytest.raises(GenotypeError, match=r"bad.json: not JSON"):
    darts.load_genotype(_write(tmp_path, "Genotype(normal=[('sep_conv_3x3', 0)])"))


def test_missing_file(tmp_path):
  with pytest.raises(GenotypeError, match=r"cannot read genotype file"):
    darts.load_genotype(tmp_path / "nope.json")
