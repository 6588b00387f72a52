"""A NAS-Bench-201 ground truth on the embedded digits: train many architectures, each
with several seeds, under one fixed protocol, in one compiled program.

The architecture is data: the supernet `Network` with affine BatchNorms that keep running
statistics, called with one-hot op weights, computes exactly its architecture's
`TinyNetwork` (the other ops' outputs are multiplied by zero, their parameters get zero
gradients). So one XLA program trains any architecture: no compile per architecture. (A
`jax.vmap` over architectures, which batches the conv kernels, and a `lax.switch` that
runs only each edge's op were both slower on XLA:CPU: BUILD_NOTES.md, "Design
decisions".)

The protocol is `PROTOCOL`; `GroundTruth` is the table
(`dnas/benchmarks/nb201_digits/ground_truth.json`, made by `experiments/nb201_digits/run.py`)
that records it, and a table under another protocol is refused.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dnas import optim
from dnas.data import digits
from dnas.spaces.nb201.network import Network
from dnas.spaces.nb201.ops import NAS_BENCH_201
from dnas.spaces.nb201.structure import EDGES, Structure

# The fixed training protocol (documented in experiments/nb201_digits/README.md): the
# benchmark's recipe (SGD, Nesterov momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4,
# no clipping) at digits size: TinyNetwork C=8, N=1 on the 1,257 training images (8x8,
# random crop after 1-pixel zero padding), batch 64, 10 epochs; accuracy on the 360 test
# and 180 validation images with BatchNorm running statistics.
PROTOCOL = dict(data="digits", C=8, N=1, epochs=10, batch_size=64, lr=0.1, lr_min=0.0,
                momentum=0.9, nesterov=True, weight_decay=5e-4, crop_padding=1)


@dataclasses.dataclass(frozen=True)
class Result:
  """One trained (architecture, seed): accuracies in [0, 1] and the test loss."""
  arch: str
  seed: int
  test_acc: float
  valid_acc: float
  test_loss: float


def one_hot(archs, primitives=NAS_BENCH_201) -> np.ndarray:
  """f32[A, 6, K]: each architecture's op per edge as one-hot rows over `primitives`."""
  out = np.zeros((len(archs), len(EDGES), len(primitives)), np.float32)
  for a, arch in enumerate(archs):
    arch = arch if isinstance(arch, Structure) else Structure.from_string(arch)
    missing = set(arch.ops) - set(primitives)
    if missing:
      raise ValueError(f"{arch} uses {sorted(missing)}, not among the ops {primitives}")
    out[a, np.arange(len(EDGES)), [primitives.index(op) for op in arch.ops]] = 1.0
  return out


def _data():
  """Normalised f32 images and int32 labels of the digits splits."""
  mean, std = digits.MEAN[0], digits.STD[0]
  return {k: ((x.astype(np.float32) / 255.0 - mean) / std, y)
          for k, (x, y) in digits.load_splits().items()}


def _crop(key, image, pad: int):
  """Random crop of f32[H, W, C] after zero padding by `pad` (in normalised space the
  padding is the normalised zero, as padding the uint8 image then normalising)."""
  h, w, c = image.shape
  zero = -digits.MEAN[0] / digits.STD[0]
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=zero)
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def make_train_fn(protocol=None):
  """f(key (typed PRNG key), weights f32[6, 5] one-hot) -> (test_acc, valid_acc,
  test_loss), each f32[]: one network trained and evaluated under the protocol."""
  p = dict(PROTOCOL if protocol is None else protocol)
  data = _data()
  x_train, y_train = (jnp.asarray(v) for v in data["train"])
  n = len(y_train)
  b = p["batch_size"]
  steps_per_epoch = n // b  # the last partial batch is dropped: one shape
  total = steps_per_epoch * p["epochs"]
  schedule = optim.per_epoch_cosine(p["lr"], p["lr_min"], p["epochs"], steps_per_epoch)
  tx = optim.make_w_tx(schedule, p["momentum"], p["weight_decay"], None, p["nesterov"])
  in_channels, num_classes = x_train.shape[-1], 10

  def build(key):
    return Network(p["C"], p["N"], num_classes, in_channels=in_channels, affine=True,
                   track_running_stats=True, rngs=nnx.Rngs(key))

  # The architecture logits (the rest) are unused: the op weights come in as data.
  graphdef, _, _, rest = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))),
                                   nnx.Param, nnx.BatchStat, ...)
  rest = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), rest)

  def loss_fn(params, stats, w, x, y):
    net = nnx.merge(graphdef, params, stats, rest, copy=True)
    logits = net(x, weights=w)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, nnx.state(net, nnx.BatchStat)

  def evaluate(params, stats, w, x, y):
    net = nnx.merge(graphdef, params, stats, rest, copy=True)
    net.eval()
    logits = net(x, weights=w)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jnp.mean(jnp.argmax(logits, -1) == y), loss

  @jax.jit
  def init(key):
    init_key, data_key = jax.random.split(key)
    _, params, stats, _ = nnx.split(build(init_key), nnx.Param, nnx.BatchStat, ...)
    # The whole schedule's batches up front (f32[steps, B, H, W, C], a few MB).
    def epoch_order(e):
      return jax.random.permutation(jax.random.fold_in(data_key, e), n)[:steps_per_epoch * b]
    idx = jax.vmap(epoch_order)(jnp.arange(p["epochs"])).reshape(total, b)
    crop_keys = jax.random.split(jax.random.fold_in(data_key, 1 << 20), total * b)
    xs = jax.vmap(lambda k, i: _crop(k, x_train[i], p["crop_padding"]))(
        crop_keys, idx.reshape(-1)).reshape((total, b) + x_train.shape[1:])
    return (params, stats, tx.init(params)), xs, y_train[idx]

  # One jitted step driven from Python, on the state's flat leaves (no per-call Variable
  # rebuilding) and slicing its batch inside: inside a `lax.scan` XLA:CPU ran the same
  # step about 3x slower, and an eager `xs[i]` costs more than the step.
  treedef = jax.tree.structure(jax.eval_shape(lambda: init(jax.random.key(0))[0]))

  @functools.partial(jax.jit, donate_argnums=0)
  def step(leaves, w, xs, ys, i):
    params, stats, opt_state = jax.tree.unflatten(treedef, leaves)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, w, xs[i],
                                                                   ys[i])
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.leaves((optax.apply_updates(params, updates), stats, opt_state))

  test_data = tuple(map(jnp.asarray, data["test"]))
  valid_data = tuple(map(jnp.asarray, data["validation"]))

  @jax.jit
  def evaluate_all(params, stats, w):
    test_acc, test_loss = evaluate(params, stats, w, *test_data)
    valid_acc, _ = evaluate(params, stats, w, *valid_data)
    return test_acc, valid_acc, test_loss

  def train_one(key, w):
    carry, xs, ys = init(key)
    leaves = jax.tree.leaves(carry)
    for i in range(total):
      leaves = step(leaves, w, xs, ys, i)
    params, stats, _ = jax.tree.unflatten(treedef, leaves)
    return evaluate_all(params, stats, w)

  return train_one


def train(archs, seeds, *, protocol=None, train_fn=None, progress=None) -> list[Result]:
  """Trains every (architecture, seed) pair under `protocol` with one compiled program.

  Args:
    archs: `Structure`s or strings.
    seeds: int seeds; each architecture is trained once per seed (the seed and the
      architecture's index draw the initialisation, the batch order and the crops).
    train_fn: a `make_train_fn(protocol)` result to reuse.
    progress: called with (done, total, seconds) after each pair.
  """
  archs = [a if isinstance(a, Structure) else Structure.from_string(a) for a in archs]
  pairs = [(a, s) for a in archs for s in seeds]
  fn = train_fn or make_train_fn(protocol)
  out, start = [], time.perf_counter()
  for arch, seed in pairs:
    key = jax.random.fold_in(jax.random.key(seed), arch.index)
    test_acc, valid_acc, test_loss = jax.device_get(fn(key, jnp.asarray(one_hot([arch])[0])))
    out.append(Result(str(arch), seed, float(test_acc), float(valid_acc), float(test_loss)))
    if progress:
      progress(len(out), len(pairs), time.perf_counter() - start)
  return out


def percentile_of(values, x: float) -> float:
  """Share of `values` (in %) below `x`, ties counted half."""
  v = np.asarray(values)
  return float(100.0 * (np.sum(v < x) + 0.5 * np.sum(v == x)) / len(v))


class GroundTruth:
  """The table of trained architectures: {arch string: per-seed results}, the uniform
  sample they were drawn in (`sample`; architectures added later, e.g. a search's find,
  are looked up but never change the sample's distribution), and the protocol.

  JSON: {"protocol": {...}, "sample": [arch, ...], "results": {arch: {"seeds": [...],
  "test_acc": [...], "valid_acc": [...], "test_loss": [...]}}}.
  """

  def __init__(self, protocol=None, sample=(), results=None):
    self.protocol = dict(PROTOCOL if protocol is None else protocol)
    self.sample = list(sample)
    self.results = results or {}

  @classmethod
  def load(cls, path: str, protocol=None) -> "GroundTruth":
    with open(path) as f:
      d = json.load(f)
    want = dict(PROTOCOL if protocol is None else protocol)
    if d.get("protocol") != want:
      raise ValueError(f"{path}: trained under protocol {d.get('protocol')}, not {want}")
    return cls(d["protocol"], d["sample"], d["results"])

  def save(self, path: str) -> None:
    """Writes the table, first taking in the (architecture, seed) results another process
    has saved to `path` since this one loaded it (results only grow, so the union is
    right)."""
    if os.path.exists(path):
      with open(path) as f:
        d = json.load(f)
      if d.get("protocol") == self.protocol and d.get("sample") == self.sample:
        self.add(Result(a, *vals) for a, row in d["results"].items()
                 for vals in zip(row["seeds"], row["test_acc"], row["valid_acc"],
                                 row["test_loss"]))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(dict(protocol=self.protocol, sample=self.sample, results=self.results), f,
                indent=0, sort_keys=True)
    os.replace(tmp, path)

  def add(self, results) -> None:
    for r in results:
      row = self.results.setdefault(r.arch, dict(seeds=[], test_acc=[], valid_acc=[],
                                                 test_loss=[]))
      if r.seed in row["seeds"]:
        continue
      row["seeds"].append(r.seed)
      row["test_acc"].append(r.test_acc)
      row["valid_acc"].append(r.valid_acc)
      row["test_loss"].append(r.test_loss)

  def ensure(self, archs, seeds, train_fn=None, path: str | None = None) -> int:
    """Trains the (architecture, seed) pairs of `archs` x `seeds` the table lacks, under
    its protocol, and adds them (saving to `path` after each, so a killed run keeps what
    it trained); returns how many were trained."""
    todo = [(a, s) for a in archs for s in seeds if not self.has(a, [s])]
    if todo:
      train_fn = train_fn or make_train_fn(self.protocol)
      for a, s in todo:
        self.add(train([a], [s], protocol=self.protocol, train_fn=train_fn))
        if path:
          self.save(path)
    return len(todo)

  def has(self, arch, seeds) -> bool:
    row = self.results.get(str(arch))
    return row is not None and set(seeds) <= set(row["seeds"])

  @property
  def base_seeds(self) -> tuple[int, ...]:
    """The seeds every trained sampled architecture has: what accuracies average over
    unless told otherwise, so that extra seeds trained for some architectures (a closer
    look at a subset) never mix into the sample's comparison."""
    rows = [set(self.results[a]["seeds"]) for a in self.sample if a in self.results]
    return tuple(sorted(set.intersection(*rows))) if rows else ()

  def accuracy(self, arch, seeds=None) -> float:
    """Mean test accuracy over `seeds` (default `base_seeds`); KeyError when one of them
    is not trained."""
    row = self.results[str(arch)]
    by_seed = dict(zip(row["seeds"], row["test_acc"]))
    seeds = self.base_seeds if seeds is None else seeds
    if not seeds:
      raise ValueError("no seeds to average (the table has no seed all sampled "
                       "architectures share)")
    return float(np.mean([by_seed[s] for s in seeds]))

  def sample_accuracies(self) -> np.ndarray:
    """f64[S]: mean test accuracy (over `base_seeds`) of each sampled architecture."""
    seeds = self.base_seeds  # once, not per architecture
    return np.asarray([self.accuracy(a, seeds) for a in self.sample if str(a) in self.results])

  def percentile(self, acc: float) -> float:
    """Share of the sample (in %) whose accuracy is below `acc`, ties counted half."""
    return percentile_of(self.sample_accuracies(), acc)

  def seed_noise(self, archs=None, seeds=None) -> float:
    """One training run's seed-to-seed standard deviation: the std of the difference
    between seeds `seeds[0]` and `seeds[1]` (default: the first two base seeds) over
    `archs` (default: the trained sample), divided by sqrt(2); with more seeds, the
    pooled std of each architecture's accuracies about its own mean (ddof 1)."""
    seeds = self.base_seeds if seeds is None else tuple(seeds)
    archs = [a for a in self.sample if a in self.results] if archs is None else list(archs)
    if len(seeds) < 2 or not archs:
      return float("nan")
    accs = np.asarray([[self.accuracy(a, [s]) for s in seeds] for a in archs])
    if len(seeds) == 2:
      return float(np.std(accs[:, 0] - accs[:, 1]) / np.sqrt(2))
    return float(np.sqrt(np.mean(np.var(accs, axis=1, ddof=1))))
