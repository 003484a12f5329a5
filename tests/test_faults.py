"""The fault-injection tool, short: SIGKILLed runs resume to the same parameters and losses."""

import json
import subprocess
import sys

from conftest import REPO, subprocess_env


def test_killed_and_restarted_training_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
  result = subprocess.run(
      [sys.executable, "tools/faults.py", "--kills=2", "--steps=30", "--checkpoint_every=5",
       f"--workdir={tmp_path / 'faults'}"],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["kills"] == 2 and report["resumes"] == 2
  assert report["kills_during_save"] >= 1  # every other kill waits for a save in progress
  assert report["corrupt_checkpoints"] == 0
  assert report["final_params_equal"] and report["losses_equal"]
