"""Checks that searches give bitwise the genotype and metrics they gave before a change.

python scripts/check_unchanged.py [--cases=digits_default,nb201]   # compare; exit 1 if any differs
python scripts/check_unchanged.py --write                          # record the references

Each case runs `python -m dnas.search` with a fixed seed in a fresh work directory and
keeps genotype.json and metrics.jsonl without their wall-clock fields.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

CASES = {
    "digits_default": [],
    "nb201": ["--config=dnas/configs/nb201.py"],
}
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                         "refactor_check", "{}.json")
CLOCK = ("wall_time", "elapsed", "seconds")


def fingerprint(workdir: str) -> dict:
  """genotype.json and metrics.jsonl of a finished search, wall-clock fields dropped."""
  with open(os.path.join(workdir, "genotype.json")) as f:
    genotype = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [{k: v for k, v in json.loads(line).items() if k not in CLOCK}
               for line in f if line.strip()]
  return dict(genotype=genotype, metrics=records)


def run(args: list[str]) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "run")
    subprocess.run([sys.executable, "-m", "dnas.search", f"--workdir={workdir}", *args],
                   check=True, stdout=subprocess.DEVNULL)
    return fingerprint(workdir)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help="record the references")
  parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
  flags = parser.parse_args()
  failed = []
  for name in flags.cases.split(","):
    got, path = run(CASES[name]), REFERENCE.format(name)
    if flags.write:
      with open(path, "w") as f:
        json.dump(got, f, indent=1)
      print(json.dumps(dict(case=name, written=path)))
      continue
    with open(path) as f:
      want = json.load(f)
    same = got == want
    print(json.dumps(dict(case=name, bitwise_same=same)))
    if not same:
      failed.append(name)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
