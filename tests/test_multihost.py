"""Real multi-host training: two processes on localhost (gloo CPU collectives, 2 devices each) train
through `python -m jaxlm.train` and match one process with 4 devices on the same global batches."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env
from test_cli import TINY, last_json
from test_train import read_metrics, write_corpus

from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.parallel import distributed

STEPS = 20
# fsdp over all 4 devices: parameters are split across both processes, so a checkpoint is only
# complete if both write their shards, and every step needs cross-process collectives.
OVERRIDES = [f"--config.train.steps={STEPS}", "--config.train.log_every=1",
             "--config.train.batch_size=16", "--config.eval.batch_size=16",
             "--config.checkpoint.every=10", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
TIMEOUT_S = 300  # generous: three processes share the machine with the other test worker


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(args: list[str], devices: int, log_path, coordinator: str | None = None) -> subprocess.Popen:
  env = subprocess_env()
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
  if coordinator:  # JAX's coordinator would listen on every interface; loopback is enough here
    env["JAX_COORDINATOR_BIND_ADDRESS"] = coordinator
  with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the process
    return subprocess.Popen([sys.executable, "-m", "jaxlm.train", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_all(procs: dict, logs: dict) -> None:
  deadline = time.monotonic() + TIMEOUT_S
  for name, proc in procs.items():
    try:
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pytest.fail(f"{name} still running after {TIMEOUT_S}s:\n{logs[name].read_text()[-3000:]}")
    assert proc.returncode == 0, f"{name} failed:\n{logs[name].read_text()[-3000:]}"


def launch(root, overrides: list[str]) -> tuple[dict, dict]:
  """Trains the tiny config as two processes (2 devices each) and as one with 4 devices, at once;
  returns (workdirs, logs) keyed "pair"/"single" and "process0"/"process1"/"single"."""
  config = root / "tiny.py"
  config.write_text(TINY.format(path=write_corpus(root / "corpus")))
  common = [f"--config={config}", *overrides]
  coordinator = f"127.0.0.1:{free_port()}"
  workdirs = {"pair": root / "pair", "single": root / "single"}
  logs = {name: root / f"{name}.log" for name in ("process0", "process1", "single")}
  procs = {}
  try:
    for pid in range(2):
      procs[f"process{pid}"] = start(
          [*common, f"--workdir={workdirs['pair']}", f"--coordinator_address={coordinator}",
           "--num_processes=2", f"--process_id={pid}"], 2, logs[f"process{pid}"], coordinator)
    procs["single"] = start([*common, f"--workdir={workdirs['single']}"], 4, logs["single"])
    wait_all(procs, logs)
  finally:  # never leave a process behind, whatever failed
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return workdirs, {name: path.read_text() for name, path in logs.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return launch(tmp_path_factory.mktemp("multihost"), OVERRIDES)


def train_losses(workdir) -> list[float]:
  return [r["loss"] for r in read_metrics(str(workdir)) if r["split"] == "train"]


def test_two_processes_train_like_one_with_the_same_devices(runs):
  workdirs, logs = runs
  pair, single = train_losses(workdirs["pair"]), train_losses(workdirs["single"])
  assert len(single) == STEPS
  # One line per step: only process 0 writes metrics into the shared workdir.
  assert len(pair) == STEPS
  np.testing.assert_allclose(pair, single, atol=1e-5)
  final = {name: {k: v for k, v in last_json(logs[name]).items() if k != "wall_seconds"}
           for name in ("process0", "single")}
  assert final["process0"] == pytest.approx(final["single"], rel=1e-5)
  # Only process 0 logs; it prints the parameter sharding table at start-up.
  assert "parameter shardings:" in logs["process0"] and "'fsdp'" in logs["process0"]
  assert "parameter shardings:" not in logs["process1"]
  assert "step 20: val loss" in logs["process0"]
  assert "step 20: val loss" not in logs["process1"]
  with open(os.path.join(workdirs["pair"], "tokenizer.json")) as f:
    assert json.load(f)  # trained once by process 0, read by process 1


PRETRAIN_STEPS = 6
T5 = ["--config.model.family=encdec", "--config.model.positions=relative",
      "--config.model.norm=rmsnorm", "--config.model.mlp=geglu", "--config.model.use_bias=False",
      "--config.model.tie_embeddings=False", "--config.model.num_decoder_layers=1",
      "--config.model.relative_buckets=8", "--config.data.tokenizer=sentencepiece",
      "--config.data.vocab_size=320", "--config.data.num_sentinels=16",
      "--config.eval.sample_tokens=0", f"--config.train.steps={PRETRAIN_STEPS}",
      f"--config.checkpoint.every={PRETRAIN_STEPS}"]


def test_two_processes_pretrain_a_t5_like_one(tmp_path):
  """Span corruption over two hosts: each step's spans are drawn over the global batch from the
  step's key inside the jitted step, so both processes corrupt their rows as the one-process run
  does; losses agree step by step. BERT's masked LM is drawn by the same objective hook
  (training/objectives.py `prepare`, in the step) and is checked sharded in tests/test_bert.py."""
  workdirs, logs = launch(tmp_path, [*OVERRIDES, *T5])
  pair, single = train_losses(workdirs["pair"]), train_losses(workdirs["single"])
  assert len(single) == len(pair) == PRETRAIN_STEPS
  np.testing.assert_allclose(pair, single, atol=1e-5)
  assert "target accuracy" in logs["process0"]
  final = {name: {k: v for k, v in last_json(logs[name]).items() if k != "wall_seconds"}
           for name in ("process0", "single")}
  assert final["process0"] == pytest.approx(final["single"], rel=1e-5)


def test_the_checkpoint_written_by_two_processes_restores_in_one(runs):
  workdirs, _ = runs
  together = trained.load(str(workdirs["pair"]))  # all 8 devices of this test process
  alone = trained.load(str(workdirs["single"]))
  assert together.step == alone.step == STEPS
  assert len(together.engine.mesh.devices.flat) == jax.device_count()
  for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_multihost_settings_come_from_flags_or_environment_and_must_be_complete():
  assert distributed.settings(None, None, None, environ={}) is None  # one process: no initialize
  explicit = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert distributed.settings("10.0.0.1:1234", 4, 3, environ={}) == explicit
  environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
             "JAX_PROCESS_ID": "3"}
  assert distributed.settings(None, None, None, environ=environ) == explicit
  assert distributed.settings(None, None, 1, environ=environ)["process_id"] == 1  # flags win
  with pytest.raises(UserError, match="needs --coordinator_address as well"):
    distributed.settings(None, 2, 0, environ={})
  with pytest.raises(UserError, match="must be in \\[0, --num_processes=2\\)"):
    distributed.settings("h:1", 2, 2, environ={})
  with pytest.raises(UserError, match="needs a port"):
    distributed.settings("10.0.0.1", 2, 0, environ={})
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    distributed.settings("h:1", None, 0, environ={"JAX_NUM_PROCESSES": "two"})


def test_sigterm_on_one_host_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  """JAX's preemption service carries a SIGTERM on process 1 to process 0; both save at the step
  they agree on, exit 0, and the checkpoint holds both processes' shards."""
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=write_corpus(tmp_path / "corpus")))
  workdir, coordinator = tmp_path / "pair", f"127.0.0.1:{free_port()}"
  logs = {f"process{pid}": tmp_path / f"process{pid}.log" for pid in range(2)}
  procs = {name: start([f"--config={config}", *OVERRIDES, "--config.train.steps=100000",
                        "--config.checkpoint.every=100000", f"--workdir={workdir}",
                        f"--coordinator_address={coordinator}", "--num_processes=2",
                        f"--process_id={pid}"], 2, logs[name], coordinator)
           for pid, name in enumerate(logs)}
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while not (workdir / "metrics.jsonl").exists() or len(train_losses(workdir)) < 3:
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), \
          {name: path.read_text()[-2000:] for name, path in logs.items()}
      time.sleep(0.2)
    procs["process1"].send_signal(signal.SIGTERM)
    wait_all(procs, logs)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  stopped = {name: last_json(path.read_text())["stopped_at"] for name, path in logs.items()}
  assert stopped["process0"] == stopped["process1"] >= 3
  assert trained.load(str(workdir)).step == stopped["process0"]


MIXTURE_STEPS = 10


def test_two_processes_train_a_mixture_of_prepared_sources_like_one(tmp_path):
  """Each process maps the shared shards and reads its rows of each mixed batch; the losses, the
  tokens drawn per source and the per-source validation metrics equal one process's.

  fsdp=4 spans both processes but does not divide the batch of 6, so the batch is split over
  `data` (size 1) only: every device holds all 6 rows, and both processes must feed the same ones
  (each feeding its own 3 rows would silently train two different models)."""
  from test_mixture import write_other_corpus  # noqa: PLC0415  (its fixtures are not needed here)
  from test_prepare import prepare_tiny  # noqa: PLC0415

  prepare_tiny(write_corpus(tmp_path / "corpus_a"), tmp_path / "a")
  prepare_tiny(write_other_corpus(tmp_path / "corpus_b"), tmp_path / "b",
               tokenizer_file=str(tmp_path / "a" / "tokenizer.json"))
  mixture = f"(('a', '{tmp_path / 'a'}', 0.75), ('b', '{tmp_path / 'b'}', 0.25))"
  workdirs, logs = launch(tmp_path, [*OVERRIDES, "--config.train.batch_size=6",
                                     "--config.eval.batch_size=6", "--config.data.source=prepared",
                                     "--config.data.path=", f"--config.data.mixture={mixture}",
                                     "--config.data.mixture_stages=((5, (0.25, 0.75)),)",
                                     f"--config.train.steps={MIXTURE_STEPS}",
                                     f"--config.checkpoint.every={MIXTURE_STEPS}"])
  pair, single = (read_metrics(str(workdirs[name])) for name in ("pair", "single"))
  train_rows = [[r for r in records if r["split"] == "train"] for records in (pair, single)]
  assert len(train_rows[0]) == len(train_rows[1]) == MIXTURE_STEPS
  np.testing.assert_allclose([r["loss"] for r in train_rows[0]],
                             [r["loss"] for r in train_rows[1]], atol=1e-5)
  assert [(r["tokens_a"], r["tokens_b"]) for r in train_rows[0]] == \
      [(r["tokens_a"], r["tokens_b"]) for r in train_rows[1]]
  final = {name: {k: v for k, v in last_json(logs[name]).items() if k != "wall_seconds"}
           for name in ("process0", "single")}
  assert {"a/loss", "b/loss", "loss"} <= set(final["single"])
  assert "training batch split over data," in logs["process0"]
  final["process1"] = {k: v for k, v in last_json(logs["process1"]).items() if k != "wall_seconds"}
  assert final["process0"] == final["process1"] == pytest.approx(final["single"], rel=1e-5)
