"""scripts/device_check.py, the one-shot GPU/TPU check, run on CPU with tiny shapes: every
case runs and reports its figures (the lent device runs the same code at full size)."""

import json
import os

from tests import cli_helpers


def test_device_check_runs_every_case_on_cpu(tmp_path):
  out_file = tmp_path / "check.jsonl"
  out = cli_helpers.run_script(os.path.join("scripts", "device_check.py"), "--tiny",
                               "--steps=1", f"--out={out_file}", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  assert [json.loads(l) for l in out_file.read_text().splitlines()] == lines
  header, *cases = lines
  assert header["backend"] == "cpu" and header["tiny"]
  assert [c["case"] for c in cases] == ["first", "retrain", "second_fd", "second", "bf16",
                                        "pc_darts", "digits"]
  for c in cases:
    assert "error" not in c and "skipped" not in c, c
    if c["case"] != "digits":
      assert c["compile_s"] > 0 and c["step_s"] > 0 and c["host_ms"] > 0, c
      assert c["pipelined_step_s"] > 0 and c["images_s"] > 0, c
  assert {c["case"]: c.get("order") for c in cases}["second_fd"] == "second_fd"
  # On CPU the second-order steps run as several compiled programs (never op by op).
  programs = {c["case"]: c.get("programs") for c in cases}
  assert programs["second_fd"] > 1 and programs["second"] > 1, cases
  assert {c["case"]: c.get("dtype") for c in cases}["bf16"] == "bfloat16"
  assert cases[-1]["valid_acc"] >= 0 and cases[-1]["wall_s"] > 0
  bad = cli_helpers.run_script(os.path.join("scripts", "device_check.py"), "--cases=first,third",
                               timeout=120)
  assert bad.returncode == 2 and "unknown case 'third'" in bad.stderr
