"""A run written before the package was split into subpackages still works after it.

tests/data/pre_layout_run was made by commit fbfeabb (the flat layout) with
  python -m jaxlm.train --config=configs/default.py --workdir=tests/data/pre_layout_run
    --config.data.source=files --config.data.path=tests/data/pre_layout_text.txt
    --config.data.tokenizer=char --config.data.seq_len=16 --config.model.max_len=16
    --config.model.d_model=16 --config.model.num_layers=1 --config.model.num_heads=2
    --config.model.mlp_dim=32 --config.train.steps=2 --config.train.batch_size=4
    --config.eval.every=0 --config.eval.batch_size=4 --config.eval.max_batches=2
    --config.eval.sample_tokens=0 --config.checkpoint.every=2
(tensorboard/ and report.png removed). Its config has no model.family: it must load as a GPT.
"""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm.config import from_saved
from jaxlm.inference import trained
from jaxlm.training import checkpoint
from jaxlm.training.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "data", "pre_layout_run")


@pytest.fixture
def old_run(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)  # the run's data.path is relative to the repository
  workdir = str(tmp_path / "run")
  shutil.copytree(FIXTURE, workdir)
  return workdir


def _raw_params(workdir: str) -> dict:
  """The checkpoint's parameters as orbax reads them with no target: no jaxlm code involved."""
  with ocp.PyTreeCheckpointer() as reader:
    state = reader.restore(os.path.join(workdir, "checkpoints", "2", "state"))
  return state["params"]


# The suite runs on 8 simulated devices; the old run's batches of 4 split over data=4 (x tensor=2).
MESH = {"mesh.data": 4, "mesh.fsdp": 1, "mesh.tensor": 2}


def test_old_checkpoint_loads_every_parameter(old_run):
  run = trained.load(old_run, overrides=MESH)
  assert run.step == 2 and run.config.model.family == "gpt"
  raw = _raw_params(old_run)
  loaded = jax.device_get(run.params)
  assert jax.tree.structure(loaded) == jax.tree.structure(raw)
  for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(raw)):
    np.testing.assert_array_equal(got, want)


def test_old_run_resumes_training(old_run):
  with open(os.path.join(old_run, "metrics.jsonl"), encoding="utf-8") as f:
    steps_before = [json.loads(line)["step"] for line in f]
  _, saved, _ = checkpoint.restore_metadata(old_run)
  config = from_saved(saved)
  config.train.steps = 3  # one step past the old run's end
  config.mesh.data, config.mesh.tensor = MESH["mesh.data"], MESH["mesh.tensor"]
  result = train(config, old_run)
  assert checkpoint.latest_step(old_run) == 3
  assert np.isfinite(result["loss"])
  with open(os.path.join(old_run, "metrics.jsonl"), encoding="utf-8") as f:
    steps_after = [json.loads(line)["step"] for line in f]
  assert steps_after[:len(steps_before)] == steps_before and max(steps_after) == 3
