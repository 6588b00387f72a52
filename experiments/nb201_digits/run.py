"""Trains the NAS-Bench-201 digits ground truth (`dnas.spaces.nb201.ground_truth`).

python experiments/nb201_digits/run.py --num_archs=300 --seeds=0,1 --shard=0/2 &
python experiments/nb201_digits/run.py --num_archs=300 --seeds=0,1 --shard=1/2 &
python experiments/nb201_digits/run.py --merge

Each shard appends one JSON line per trained (architecture, seed) to `shard_I.jsonl` in
`--dir` (this folder) and skips pairs already there, so a killed run resumes. `--merge`
folds the shards into the table, `--table` (by default the one dnas ships,
`dnas/benchmarks/nb201_digits/ground_truth.json`). `--archs=A,B` (strings) trains extra
architectures, such as a search's find, into the table without changing the sample.
"""

import json
import os
import sys

from absl import app, flags

from dnas.benchmarks.nb201_digits import DEFAULT_TABLE
from dnas.spaces.nb201 import ground_truth as gt
from dnas.spaces.nb201.structure import Structure

HERE = os.path.dirname(os.path.abspath(__file__))
flags.DEFINE_integer("num_archs", 300, "uniform sample size (without replacement)")
flags.DEFINE_integer("sample_seed", 0, "seed of the sample")
flags.DEFINE_list("seeds", ["0", "1"], "training seeds per architecture")
flags.DEFINE_string("shard", "0/1", "I/K: this process trains pairs I, I+K, ...")
flags.DEFINE_list("archs", [], "extra architecture strings to train (not in the sample)")
flags.DEFINE_bool("merge", False, "fold the shards into --table")
flags.DEFINE_string("dir", HERE, "where the shards live")
flags.DEFINE_string("table", DEFAULT_TABLE, "the ground-truth table the shards fold into")
FLAGS = flags.FLAGS


def sample(n, seed):
  import numpy as np  # pylint: disable=g-import-not-at-top
  idx = np.random.default_rng(seed).choice(5 ** 6, size=n, replace=False)
  return [str(Structure.from_index(int(i))) for i in idx]


def main(argv):
  del argv
  table_path = FLAGS.table
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.merge:
    table = (gt.GroundTruth.load(table_path) if os.path.exists(table_path)
             else gt.GroundTruth(sample=sample(FLAGS.num_archs, FLAGS.sample_seed)))
    for name in sorted(os.listdir(FLAGS.dir)):
      if name.startswith("shard_") and name.endswith(".jsonl"):
        with open(os.path.join(FLAGS.dir, name)) as f:
          table.add(gt.Result(**json.loads(line)) for line in f if line.strip())
    table.save(table_path)
    print(f"{table_path}: {len(table.results)} architectures, "
          f"{sum(len(r['seeds']) for r in table.results.values())} runs")
    return
  i, k = (int(v) for v in FLAGS.shard.split("/"))
  archs = ([str(Structure.from_string(a)) for a in FLAGS.archs] if FLAGS.archs
           else sample(FLAGS.num_archs, FLAGS.sample_seed))
  pairs = [(a, s) for a in archs for s in seeds][i::k]
  shard_path = os.path.join(FLAGS.dir, f"shard_{i}.jsonl")
  done = set()
  if os.path.exists(shard_path):
    with open(shard_path) as f:
      done = {(d["arch"], d["seed"]) for d in map(json.loads, filter(str.strip, f))}
  todo = [p for p in pairs if p not in done]
  fn = gt.make_train_fn()
  with open(shard_path, "a") as f:
    for n, (arch, seed) in enumerate(todo, 1):
      (r,) = gt.train([arch], [seed], train_fn=fn)
      f.write(json.dumps(r.__dict__) + "\n")
      f.flush()
      print(f"{n}/{len(todo)} {r.test_acc:.4f} {arch} seed {seed}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
