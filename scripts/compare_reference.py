"""Compares dnas's networks with the PyTorch reference's, number for number.

python scripts/compare_reference.py --torch_python=/tmp/tv/bin/python \
    --xautodl=/path/with/xautodl --darts=/path/to/darts/cnn [--cases=nb201_tiny] [--float64]

Same numbers as the reference, not only the same shapes: runs a reference PyTorch model
and its dnas twin from the same weights on the same inputs and prints the largest
differences (outputs, weight gradients, BatchNorm running statistics, eval outputs).
`--xautodl`: a checkout of D-X-Y/AutoDL-Projects (the folder holding its xautodl/);
`--darts`: quark0/darts's cnn/ (its utils.py needs torchvision: the worker stands in a
drop_path-only module).

Two processes: this script re-runs itself under `--torch_python` (a venv with torch CPU:
pip install "torch==2.13.0+cpu" numpy) as the worker that builds the reference model with
seeded weights and inputs, runs a training-mode forward and backward and an eval-mode
forward, and saves everything to an .npz; the dnas side loads the weights through
`dnas.convert.load_torch_state_dict` and compares. Not part of the test suite.

Cases: NAS-Bench-201 `TinyNetwork` (xautodl `cell_infers/tiny_network.py`); DARTS's
`NetworkCIFAR` with DARTS_V2 and its auxiliary head (quark0/darts `cnn/model.py`; loss =
CE + 0.4 CE(auxiliary), drop path 0), C=16, 8 cells.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
        "nor_conv_1x1~2|")
CASES = {"nb201_tiny": dict(C=16, N=5, classes=10, batch=8, size=32),
         "darts_cifar": dict(C=16, layers=8, classes=10, batch=4, size=32),
         "darts_architect": {}}
AUX_WEIGHT = 0.4  # the reference train.py's auxiliary_weight


# ---- the worker (torch venv) ------------------------------------------------------

def _import_xautodl(root):
  # The model files without xautodl/models/__init__ (which pulls the config utilities).
  sys.path.insert(0, root)
  for name, path in (("xautodl", "xautodl"), ("xautodl.models", "xautodl/models")):
    mod = types.ModuleType(name)
    mod.__path__ = [os.path.join(root, path)]
    sys.modules[name] = mod


def _reference_net(case, xautodl, darts):
  c = CASES[case]
  if case == "nb201_tiny":
    _import_xautodl(xautodl)
    from xautodl.models.cell_infers.tiny_network import TinyNetwork  # pylint: disable=g-import-not-at-top
    from xautodl.models.cell_searchs.genotypes import Structure  # pylint: disable=g-import-not-at-top
    net = TinyNetwork(c["C"], c["N"], Structure.str2structure(ARCH), c["classes"])
    return net, lambda out: (out[1], None)
  sys.path.insert(0, darts)
  utils = types.ModuleType("utils")  # model.py needs only drop_path (here p = 0)
  utils.drop_path = lambda x, p: x
  sys.modules["utils"] = utils
  import genotypes  # pylint: disable=g-import-not-at-top
  from model import NetworkCIFAR  # pylint: disable=g-import-not-at-top
  net = NetworkCIFAR(c["C"], c["classes"], c["layers"], True, genotypes.DARTS_V2)
  net.drop_path_prob = 0.0
  return net, lambda out: out


def worker(case, xautodl, darts, out, float64=False):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if float64:
    torch.set_default_dtype(torch.float64)
  c = CASES[case]
  net, outputs = _reference_net(case, xautodl, darts)
  # Non-trivial BatchNorm affine values, so that scale and shift are exercised.
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
      m.weight.data.uniform_(0.5, 1.5)
      m.bias.data.uniform_(-0.5, 0.5)
  state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
  x = torch.randn(c["batch"], 3, c["size"], c["size"])
  y = torch.randint(0, c["classes"], (c["batch"],))
  net.train()
  logits, aux = outputs(net(x))
  loss = torch.nn.functional.cross_entropy(logits, y)
  if aux is not None:
    loss = loss + AUX_WEIGHT * torch.nn.functional.cross_entropy(aux, y)
  loss.backward()
  grads = {k: p.grad.numpy() for k, p in net.named_parameters()}
  after = {k: v.detach().numpy() for k, v in net.state_dict().items() if "running" in k}
  net.eval()
  with torch.no_grad():
    logits_eval, _ = outputs(net(x))
  np.savez(out, x=x.numpy(), y=y.numpy(), logits=logits.detach().numpy(),
           loss=loss.detach().numpy(), logits_eval=logits_eval.numpy(),
           **{f"state/{k}": v for k, v in state.items()},
           **{f"grad/{k}": v for k, v in grads.items()},
           **{f"after/{k}": v for k, v in after.items()})


ARCHITECT = dict(C=4, layers=3, classes=10, batch=8, size=16, lr=0.025, momentum=0.9,
                 weight_decay=3e-4, a_lr=3e-4, a_weight_decay=1e-3)


def architect_worker(darts, out, float64=False):
  """The reference `Architect.step` from one state: first order (`unrolled=False`) and its
  finite-difference second order (`unrolled=True`); the hypergradient it leaves in each
  alpha's .grad and the alphas after the Adam step."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if float64:
    torch.set_default_dtype(torch.float64)
  torch.Tensor.cuda = lambda self, *a, **k: self  # the reference calls .cuda() throughout
  torch.nn.Module.cuda = lambda self, *a, **k: self
  sys.path.insert(0, darts)
  from architect import Architect  # pylint: disable=g-import-not-at-top
  from model_search import Network  # pylint: disable=g-import-not-at-top
  c = ARCHITECT
  net = Network(c["C"], c["classes"], c["layers"], torch.nn.CrossEntropyLoss())
  net.train()
  init = {k: v.detach().clone() for k, v in net.state_dict().items()}
  alphas = [a.detach().clone() for a in net.arch_parameters()]
  xs = [torch.randn(c["batch"], 3, c["size"], c["size"]) for _ in range(2)]
  ys = [torch.randint(0, c["classes"], (c["batch"],)) for _ in range(2)]
  args = types.SimpleNamespace(momentum=c["momentum"], weight_decay=c["weight_decay"],
                               arch_learning_rate=c["a_lr"],
                               arch_weight_decay=c["a_weight_decay"])
  saved = dict(x_train=xs[0].numpy(), y_train=ys[0].numpy(), x_val=xs[1].numpy(),
               y_val=ys[1].numpy(), **{f"state/{k}": v.numpy() for k, v in init.items()},
               **{f"state/{n}": a.numpy() for n, a in zip(("alphas_normal", "alphas_reduce"),
                                                          alphas)})
  for unrolled in (False, True):
    net.load_state_dict(init)
    for a, a0 in zip(net.arch_parameters(), alphas):
      a.data.copy_(a0)
      a.grad = None
    w_opt = torch.optim.SGD(net.parameters(), c["lr"], momentum=c["momentum"],
                            weight_decay=c["weight_decay"])
    Architect(net, args).step(xs[0], ys[0], xs[1], ys[1], c["lr"], w_opt, unrolled)
    tag = "second_fd" if unrolled else "first"
    for n, a in zip(("alphas_normal", "alphas_reduce"), net.arch_parameters()):
      saved[f"{tag}/grad/{n}"] = a.grad.detach().numpy().copy()
      saved[f"{tag}/after/{n}"] = a.detach().numpy().copy()
  np.savez(out, **saved)


def compare_architect(ref, float64=False) -> dict:
  """dnas's architecture step from the same weights, alphas and batches: its hypergradient
  (first; second_fd, the reference's unrolled step) and the alphas after Adam."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from dnas import bilevel, convert, hypergrad  # pylint: disable=g-import-not-at-top
  from dnas.spaces import darts  # pylint: disable=g-import-not-at-top
  c = ARCHITECT
  net = darts.Network(c["C"], c["classes"], c["layers"], rngs=nnx.Rngs(0))
  if float64:
    nnx.update(net, jax.tree.map(lambda v: v.astype(np.float64), nnx.state(net)))
  state_dict = {k[len("state/"):]: ref[k] for k in ref.files if k.startswith("state/")}
  convert.load_torch_state_dict(net, state_dict, convert.darts_names(net))
  batch = lambda s: {"image": jnp.asarray(ref[f"x_{s}"].transpose(0, 2, 3, 1)),  # NHWC
                     "label": jnp.asarray(ref[f"y_{s}"])}
  w_tx = bilevel.make_w_tx(c["lr"], c["momentum"], c["weight_decay"], grad_clip=None)
  a_tx = bilevel.make_a_tx(c["a_lr"], 0.5, 0.999, c["a_weight_decay"])
  out = {}
  # The reference's second order is the finite difference; dnas's exact `second` agrees
  # with it to O(R^2) (tests/test_bilevel.py), and its one-program HVP compiles for many
  # minutes on this CPU: left out here.
  for order in ("first", "second_fd"):
    graphdef, state = bilevel.init_search_state(nnx.clone(net), w_tx, a_tx, jax.random.key(0))
    hg = hypergrad.from_order(order, w_tx)
    # As dnas.search runs them on CPU: a few jitted pieces (one program of a whole
    # second-order step compiles for many minutes here).
    piece = bilevel.split_piece(donate=False)
    arch_grad = bilevel.make_arch_grad_fn(graphdef, hg, piece=piece)
    d_alpha, _, _ = arch_grad(state, batch("train"), batch("val"), {})
    arch_step, _ = bilevel.make_phase_steps(graphdef, w_tx, a_tx, hypergrad=hg, piece=piece)
    after, _ = arch_step(state, batch("train"), batch("val"))
    tag = order
    res = {}
    for n in ("alphas_normal", "alphas_reduce"):
      res[f"grad_{n}"] = _diff(d_alpha[n][...], ref[f"{tag}/grad/{n}"])
      res[f"after_{n}"] = _diff(after.alphas[n][...], ref[f"{tag}/after/{n}"])
    out[order] = res
  return out


# ---- the dnas side ----------------------------------------------------------------

def _dnas_net(case):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from dnas import convert  # pylint: disable=g-import-not-at-top
  from dnas.spaces import darts, nb201  # pylint: disable=g-import-not-at-top
  c = CASES[case]
  if case == "nb201_tiny":
    return (nb201.TinyNetwork(ARCH, c["C"], c["N"], c["classes"], rngs=nnx.Rngs(0)),
            lambda net: convert.nb201_name, lambda out: (out, None))
  net = darts.NetworkCIFAR(darts.DARTS_V2, c["C"], c["classes"], c["layers"], auxiliary=True,
                           drop_path_prob=0.0, rngs=nnx.Rngs(0))
  return net, convert.darts_names, lambda out: out


def compare(case, ref, float64=False) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from dnas import convert  # pylint: disable=g-import-not-at-top
  state = {k[len("state/"):]: ref[k] for k in ref.files if k.startswith("state/")}
  net, names, outputs = _dnas_net(case)
  if float64:
    nnx.update(net, jax.tree.map(lambda v: v.astype(np.float64), nnx.state(net)))
  rename = names(net)
  convert.load_torch_state_dict(net, state, rename)
  x = ref["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
  y = ref["y"]
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  x = x.astype(np.float64) if float64 else x

  def loss_fn(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    logits, aux = outputs(m(x))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if aux is not None:
      loss = loss + AUX_WEIGHT * optax.softmax_cross_entropy_with_integer_labels(aux, y).mean()
    return loss, (logits, m)

  (loss, (logits, trained)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  out = dict(logits=_diff(logits, ref["logits"]), loss=_diff(loss, ref["loss"]))
  flat_grads = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(grads)}
  diffs = {}
  for key in ref.files:
    if key.startswith("grad/"):
      name = key[len("grad/"):]
      path = rename(name)
      g = convert._layout(ref[key], tuple(path.split(".")))  # pylint: disable=protected-access
      diffs[name] = _diff(flat_grads[path], g)
  top = max(d["scale"] for d in diffs.values())
  # Per tensor relative to its own largest entry, over tensors whose gradient is not
  # ~0 (a BatchNorm shift right before another train-mode BatchNorm has gradient 0 in
  # exact arithmetic: both sides return float32 noise of ~1e-9 there).
  rel = {n: d["max_abs"] / d["scale"] for n, d in diffs.items() if d["scale"] > 1e-4 * top}
  worst = max(rel, key=rel.get)
  out["grads"] = dict(max_abs=max(d["max_abs"] for d in diffs.values()), max_grad=top,
                      worst_tensor=worst, worst_tensor_rel=rel[worst], tensors=len(diffs),
                      near_zero_tensors=len(diffs) - len(rel))
  after = {".".join(map(str, p)): v.get_value()
           for p, v in nnx.to_flat_state(nnx.state(trained, nnx.BatchStat))}
  out["running_stats_max_abs"] = float(max(
      _diff(after[rename(k[len("after/"):])], ref[k])["max_abs"]
      for k in ref.files if k.startswith("after/")))
  trained.eval()
  out["logits_eval"] = _diff(outputs(trained(x))[0], ref["logits_eval"])
  return out


def _diff(a, b) -> dict:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return dict(max_abs=float(np.abs(a - b).max()),
              max_rel=float((np.abs(a - b) / (np.abs(b) + 1e-6)).max()),
              scale=float(np.abs(b).max()))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--torch_python", default="/tmp/tv/bin/python")
  p.add_argument("--xautodl", default="/tmp/ref201", help="a folder holding xautodl/")
  p.add_argument("--darts", default="/tmp/refdarts/cnn", help="quark0/darts's cnn/ folder")
  p.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
  p.add_argument("--float64", action="store_true",
                 help="both sides in float64: what remains is a difference in the math")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--out", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker == "darts_architect":
    return architect_worker(a.darts, a.out, a.float64)
  if a.worker:
    return worker(a.worker, a.xautodl, a.darts, a.out, a.float64)
  if a.float64:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_enable_x64", True)
  report = {}
  with tempfile.TemporaryDirectory() as tmp:
    for case in a.cases.split(","):
      path = os.path.join(tmp, f"{case}.npz")
      subprocess.run([a.torch_python, os.path.abspath(__file__), f"--worker={case}",
                      f"--xautodl={a.xautodl}", f"--darts={a.darts}", f"--out={path}"] +
                     (["--float64"] if a.float64 else []), check=True)
      report[case] = (compare_architect(np.load(path), a.float64) if case == "darts_architect"
                      else compare(case, np.load(path), a.float64))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
