"""The entry points as a user runs them: `python -m jaxlm.<verb>` in fresh processes."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env
from test_train import write_corpus

from jaxlm.inference import trained
from jaxlm.inference.beam import BeamConfig
from jaxlm.inference.decode import beam_generate
from jaxlm.training import checkpoint

TINY = """
from jaxlm.config import base_config

def get_config():
  c = base_config()
  c.data.source, c.data.tokenizer, c.data.path = "files", "char", {path!r}
  c.data.seq_len = c.model.max_len = 32
  c.data.val_fraction = 0.2
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 32, 2, 2, 64
  c.train.batch_size, c.train.steps, c.train.log_every, c.train.warmup_steps = 8, 6, 3, 2
  c.eval.every, c.eval.batch_size, c.eval.sample_tokens = 0, 8, 8
  c.checkpoint.every = 3
  return c
"""


def jaxlm(verb: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"jaxlm.{verb}", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  config = root / "tiny.py"
  config.write_text(TINY.format(path=write_corpus(root / "corpus")))
  workdir = str(root / "run")
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  return config, workdir, result


def last_json(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])


def test_train_prints_final_metrics_and_writes_its_workdir(cli_run):
  _, workdir, result = cli_run
  assert set(last_json(result.stdout)) >= {"loss", "perplexity", "bits_per_byte", "tokens"}
  for name in ("metrics.jsonl", "tokenizer.json", "tensorboard", "checkpoints/6", "report.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert "parameter shardings" in result.stderr + result.stdout


def test_evaluate_prints_metrics_json_whose_perplexity_is_exp_loss(cli_run):
  _, workdir, _ = cli_run
  result = jaxlm("evaluate", f"--workdir={workdir}", "--config.eval.batch_size=4")
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = last_json(result.stdout)
  assert set(metrics) >= {"loss", "perplexity", "bits_per_byte", "token_accuracy", "tokens"}
  assert metrics["perplexity"] == pytest.approx(2.718281828459045 ** metrics["loss"], rel=1e-9)


def test_sample_continues_the_prompt(cli_run):
  _, workdir, _ = cli_run
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=the cat", "--num_samples=2",
                 "--max_new_tokens=10", "--seed=3")
  assert result.returncode == 0, result.stderr[-2000:]
  samples = last_json(result.stdout)["samples"]
  assert len(samples) == 2 and all(s.startswith("the cat") for s in samples)


def test_sample_with_beam_search_prints_the_best_hypotheses(cli_run):
  _, workdir, _ = cli_run
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=the cat", "--beam_size=3",
                 "--num_samples=2", "--max_new_tokens=8", "--length_penalty=0.5",
                 "--early_stopping=never")
  assert result.returncode == 0, result.stderr[-2000:]
  samples = last_json(result.stdout)["samples"]
  run = trained.load(workdir)  # the library's search is checked against transformers' elsewhere
  prompt = [run.tokenizer.eos_id] + run.tokenizer.encode("the cat")
  beam = BeamConfig(3, 8, 0.5, "never", run.tokenizer.eos_id)
  best = beam_generate(run.params, run.model_cfg, [prompt], beam, num_return=2)[0]
  assert samples == ["the cat" + run.tokenizer.decode(ids) for ids in best]
  assert samples[0] != samples[1]


def test_rerunning_train_resumes_instead_of_starting_over(cli_run):
  config, workdir, _ = cli_run
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}", "--config.train.steps=9")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed from step 6" in result.stderr + result.stdout
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "9"))


def test_cpu_devices_splits_the_host_and_trains_the_same_model(cli_run, tmp_path):
  config, _, one_device = cli_run
  result = jaxlm("train", f"--config={config}", f"--workdir={tmp_path / 'w'}",
                 "--config.mesh.cpu_devices=2", "--config.mesh.data=1", "--config.mesh.fsdp=-1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in result.stderr
  # Parameters and optimizer state sharded over two devices: the same run, to float rounding.
  assert last_json(result.stdout)["loss"] == pytest.approx(last_json(one_device.stdout)["loss"],
                                                           abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--config.data.path=/nonexistent/corpus"], "does not exist"),
    (["--config.mesh.data=3"], "mesh.data * mesh.fsdp * mesh.tensor = 1"),
    (["--config.data.seq_len=64"], "longer than model.max_len"),
    (["--num_processes=2", "--process_id=0"], "needs --coordinator_address as well"),
    (["--config.mesh.cpu_devices=-1"], "mesh.cpu_devices=-1"),
])
def test_bad_input_gives_one_line_error_and_exit_2(cli_run, tmp_path, args, message):
  config, _, _ = cli_run
  result = jaxlm("train", f"--config={config}", f"--workdir={tmp_path / 'w'}", *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr[-1000:]
  assert "Traceback" not in result.stderr


def test_finetune_cli_on_user_jsonl_then_task_evaluation(cli_run, tmp_path):
  _, pretrained, _ = cli_run
  data = tmp_path / "copy.jsonl"
  data.write_text("".join(json.dumps({"prompt": f"{w}=", "completion": w}) + "\n"
                          for w in ["cat", "dog", "mat", "log", "sat", "ran"] * 10))
  finetune = ["--config=configs/finetune.py", f"--config.init_from={pretrained}",
              "--config.data.source=files", f"--config.data.path={data}", "--config.data.seq_len=32",
              "--config.train.steps=4", "--config.train.batch_size=8", "--config.eval.batch_size=8",
              "--config.eval.every=0", "--config.checkpoint.every=4"]
  refused = jaxlm("train", *finetune, f"--workdir={tmp_path / 'refused'}", "--config.model.d_model=64")
  assert refused.returncode == 2 and "model.d_model (pretrained 32, override 64)" in refused.stderr
  workdir = tmp_path / "ft"
  result = jaxlm("train", *finetune, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  # Its latest step: 6, or 9 once the resume test above has extended the run.
  latest = checkpoint.latest_step(str(pretrained))
  assert f"finetuning from step {latest} of" in result.stderr + result.stdout
  result = jaxlm("evaluate", f"--workdir={workdir}", f"--task={data}", "--max_new_tokens=4")
  assert result.returncode == 0, result.stderr[-2000:]
  metrics = last_json(result.stdout)
  assert metrics["examples"] == 60 and metrics["task"] == "copy" and metrics["step"] == 4
  assert {"exact_match", "bleu", "rougeL", "completion_perplexity"} <= set(metrics)
  with open(workdir / "predictions" / "copy_step4.jsonl") as f:
    assert len(f.readlines()) == 60


def test_cpu_devices_leaves_an_already_started_backend_alone(caplog):
  import jax

  from jaxlm.parallel import sharding
  sharding.split_cpu_host(0)
  sharding.split_cpu_host(jax.device_count())  # what it already has: nothing to say
  assert "ignored" not in caplog.text
  sharding.split_cpu_host(2)
  assert jax.device_count() == 8 and "mesh.cpu_devices=2 ignored" in caplog.text


def test_the_error_line_stays_last_whatever_reports_itself_at_shutdown():
  """A background task that the error cut short (here a thread logging a traceback through
  asyncio's logger as Python shuts down, as Orbax's tensorstore reads may) must not print after
  the one-line error."""
  program = """
import logging, threading, time
from jaxlm import cli
from jaxlm.errors import UserError

def late_report():
  time.sleep(0.3)
  try:
    raise RuntimeError("a read the error cut short")
  except RuntimeError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")

def fail():
  threading.Thread(target=late_report).start()  # not a daemon: joined at shutdown
  raise UserError("the input is wrong; fix it")

cli.flags.FLAGS(["prog"])
cli.run(fail)
"""
  result = subprocess.run([sys.executable, "-c", program], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == ["error: the input is wrong; fix it"], result.stderr
