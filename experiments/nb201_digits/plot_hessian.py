"""Plots RobustDARTS's collapse signal of several searches: the Hessian's largest
eigenvalue in alpha per epoch (`hessian_max_eig` in metrics.jsonl, logged with
`--config.search.hessian_every=N`), beside each search's parameter-free op count.

python experiments/nb201_digits/plot_hessian.py --out=experiments/nb201_digits/hessian.png \
    DARTS=runs/hess_darts beta-DARTS=runs/hess_beta_darts ...
"""

import argparse
import json
import os

from dnas.plotting import pyplot


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, filter(str.strip, f)) if "hessian_max_eig" in r]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="NAME=search workdir")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  plt = pyplot()
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
  for item in a.runs:
    name, path = item.split("=", 1)
    records = read(path)
    epochs = [r["epoch"] for r in records]
    line, = top.plot(epochs, [r["hessian_max_eig"] for r in records], marker="o", ms=3,
                     label=f"{name} (last {records[-1]['hessian_max_eig']:.3g})")
    free = [r.get("param_free_ops", r.get("param_free_ops_normal")) for r in records]
    bottom.plot(epochs, free, color=line.get_color(), marker="o", ms=3, label=name)
  top.set_ylabel("largest eigenvalue of the Hessian in alpha")
  top.set_yscale("log")
  top.legend(fontsize=8)
  bottom.set_ylabel("parameter-free ops in the derived cell")
  bottom.set_xlabel("search epoch")
  fig.tight_layout()
  fig.savefig(a.out, dpi=120)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
