"""Pretrain -> finetune handoff, prompt/completion data, and task metrics."""

import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
from test_train import WORDS, tiny_config, write_corpus

from jaxlm.data.records import Record, pack_records
from jaxlm.errors import UserError
from jaxlm.eval.generation import evaluate_task, score
from jaxlm.inference import trained
from jaxlm.models import GPT
from jaxlm.training import checkpoint, finetune
from jaxlm.training.loop import train
from jaxlm.training.step import loss_fn

LETTERS = sorted(set("".join(WORDS)))  # characters the pretrained char tokenizer knows


def copy_records(n: int, seed: int) -> list[Record]:
  """A synthetic task: repeat a short random string (letters the pretrained tokenizer knows)."""
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(LETTERS, size=rng.integers(3, 6))) for _ in range(n)]
  return [Record(prompt=f"{w}=", completion=w) for w in words]


def write_jsonl(path, records) -> str:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(dataclasses.asdict(r)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  root = tmp_path_factory.mktemp("pre")
  config = tiny_config(write_corpus(root / "corpus"), steps=20)
  config.eval.sample_tokens = 0
  train(config, str(root / "run"))
  return str(root / "run")


def finetune_config(pretrained_dir: str, data_dir, steps: int):
  config = tiny_config("", steps=steps)
  config.init_from = pretrained_dir
  config.data.source, config.data.format = "files", "auto"
  config.data.path = write_jsonl(data_dir / "train.jsonl", copy_records(1500, 0))
  config.data.val_path = write_jsonl(data_dir / "val.jsonl", copy_records(64, 1))
  config.train.lr, config.train.warmup_steps, config.train.batch_size = 5e-3, 10, 32
  config.eval.every, config.eval.sample_tokens, config.checkpoint.every = 0, 0, steps // 2
  return config


def test_restored_parameters_give_exactly_the_pretrained_logits_on_another_mesh(pretrained):
  source = trained.load(pretrained)  # all 8 devices, data parallel
  ft_config, _ = finetune.inherit(source.config, json.loads(source.config.to_json()), {})
  ft_config.mesh.data, ft_config.mesh.fsdp = 1, 8
  from jaxlm.parallel import sharding
  from jaxlm.training.engine import build_engine
  from jaxlm.training.optim import OptimConfig
  mesh = sharding.make_mesh(1, 8, 1)
  engine = build_engine(source.model_cfg, OptimConfig(), mesh, ft_config.mesh.rules, 1, 32)
  params, _ = finetune.restore_params(pretrained, source.step, engine.abstract_state.params,
                                   engine.init().params, source.model_cfg.max_len)
  assert params["embedding"].sharding.spec == engine.state_shardings.params["embedding"].spec
  tokens = np.random.default_rng(0).integers(0, source.model_cfg.vocab_size, (2, 32))
  positions, segments = np.tile(np.arange(32), (2, 1)), np.ones((2, 32), np.int32)
  model = GPT(source.model_cfg)
  ours = model.apply({"params": jax.device_get(params)}, tokens, positions, segments)
  theirs = model.apply({"params": jax.device_get(source.params)}, tokens, positions, segments)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_longer_learned_position_table_keeps_the_pretrained_rows(pretrained):
  source = trained.load(pretrained)
  from jaxlm.parallel import sharding
  from jaxlm.training.engine import build_engine
  from jaxlm.training.optim import OptimConfig
  longer = dataclasses.replace(source.model_cfg, max_len=48)
  engine = build_engine(longer, OptimConfig(), sharding.make_mesh(8, 1, 1),
                        source.config.mesh.rules, 1, 32)
  fresh = engine.init().params
  params, _ = finetune.restore_params(pretrained, source.step, engine.abstract_state.params, fresh, 32)
  table = np.asarray(params["pos_embedding"])
  np.testing.assert_array_equal(table[:32], np.asarray(source.params["pos_embedding"]))
  np.testing.assert_array_equal(table[32:], np.asarray(fresh["pos_embedding"])[32:])


def test_overrides_that_change_the_architecture_are_refused_and_listed(pretrained, tmp_path):
  config = finetune_config(pretrained, tmp_path, steps=4)
  with pytest.raises(UserError) as error:
    train(config, str(tmp_path / "ft"), {"model.d_model": 64, "model.num_layers": 3,
                                         "data.tokenizer": "byte"})
  message = str(error.value)
  assert "\n" not in message
  for part in ("model.d_model (pretrained 32, override 64)", "model.num_layers (pretrained 2",
               "data.tokenizer (pretrained 'char', override 'byte')"):
    assert part in message
  assert not os.path.exists(tmp_path / "ft" / "checkpoints")
  # Dropout and a longer context may change; they are reported, not refused.
  config.model.dropout, config.model.max_len = 0.1, 64  # as the command line would set them
  inherited, notes = finetune.inherit(config, json.loads(trained.load(pretrained).config.to_json()),
                                      {"model.dropout": 0.1, "model.max_len": 64})
  assert inherited.model.dropout == 0.1 and inherited.model.max_len == 64 and len(notes) == 2
  assert inherited.model.d_model == 32  # everything else comes from the pretrained run


def test_prompt_tokens_carry_no_loss(pretrained):
  run = trained.load(pretrained)
  tok = run.tokenizer
  records = copy_records(6, 3)
  packed = pack_records([(tok.encode(r.prompt), tok.encode(r.completion)) for r in records],
                        tok.eos_id, 32, "left")
  batch = {k: np.stack([packed[i][k] for i in range(len(packed))]) for k in packed[0]}
  # Weighted targets are exactly the completions and their closing EOS.
  expected = sum(len(tok.encode(r.completion)) + 1 for r in records)
  assert batch["weights"].sum() == expected
  model = GPT(run.model_cfg)
  params = jax.device_get(run.params)
  base = float(loss_fn(params, batch, model, 0.0, None)[0])
  changed = dict(batch, targets=batch["targets"].copy())
  prompt_targets = (batch["weights"] == 0) & (batch["segment_ids"] > 0)
  changed["targets"][prompt_targets] = (changed["targets"][prompt_targets] + 1) % tok.vocab_size
  assert float(loss_fn(params, changed, model, 0.0, None)[0]) == base
  completion = np.argwhere(batch["weights"] > 0)[0]
  changed["targets"][tuple(completion)] = (changed["targets"][tuple(completion)] + 1) % tok.vocab_size
  assert float(loss_fn(params, changed, model, 0.0, None)[0]) != base


def test_finetuning_raises_exact_match_and_a_restart_resumes_the_finetune(pretrained, tmp_path):
  config = finetune_config(pretrained, tmp_path, steps=300)
  workdir = str(tmp_path / "ft")
  test_file = write_jsonl(tmp_path / "test.jsonl", copy_records(48, 2))
  before, _ = evaluate_task(trained.load(pretrained), test_file, 8, "\n", 16, "char")
  train(config, workdir)
  after_run = trained.load(workdir)
  after, rows = evaluate_task(after_run, test_file, 8, "\n", 16, "char")
  assert after["exact_match"] >= before["exact_match"] + 0.3, (before, after, rows[:3])
  assert after["rougeL"] > before["rougeL"] and after["bleu"] > before["bleu"]
  assert after["completion_perplexity"] < before["completion_perplexity"]
  assert after_run.step == 300 and checkpoint.latest_steps(pretrained) == [20]

  # Lose the last finetune checkpoint: the rerun continues the finetune from step 150.
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(workdir), "300"))
  train(config, workdir)
  again = trained.load(workdir)
  for a, b in zip(jax.tree.leaves(after_run.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_metrics_match_hand_computed_values():
  assert score(["a b c d"], ["a b c d"]) == pytest.approx(
      {"exact_match": 1.0, "bleu": 100.0, "chrf": 100.0, "rougeL": 1.0})
  assert score(["x y"], ["a b"]) == {"exact_match": 0.0, "bleu": 0.0, "chrf": 0.0, "rougeL": 0.0}
  # n-gram precisions 4/5, 3/4, 2/3, 1/2 and no brevity penalty: BLEU = 100 * 0.2 ** 0.25.
  assert score(["a b c d e"], ["a b c d f"])["bleu"] == pytest.approx(100 * 0.2**0.25, rel=1e-6)
  # ROUGE-L: LCS 5 of 5 predicted and 6 reference words -> F1 = 2 * 1 * 5/6 / (1 + 5/6).
  rouge = score(["the cat on the mat"], ["the cat sat on the mat"])["rougeL"]
  assert rouge == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
  assert score([" x ", "y"], ["x", "z"])["exact_match"] == 0.5  # whitespace-stripped
  # Character BLEU for one-word answers: "abcde" vs "abcdf" has the same n-gram counts as above.
  assert score(["abcde"], ["abcdf"], "char")["bleu"] == pytest.approx(100 * 0.2**0.25, rel=1e-6)
  # chrF: character n-gram precision = recall, 4/5, 3/4, 2/3, 1/2, 0/1 for n = 1..5 (no 6-gram
  # exists, so that order is left out), averaged; F-beta of equal P and R is their value.
  chrf = score(["abcde"], ["abcdf"])["chrf"]
  assert chrf == pytest.approx(100 * (4 / 5 + 3 / 4 + 2 / 3 + 1 / 2 + 0) / 5, rel=1e-6)


def test_records_longer_than_the_window_are_cut_from_the_left_or_dropped():
  prompt, completion = list(range(10, 30)), [5, 6, 7]
  left = pack_records([(prompt, completion)], 1, 12, "left")
  assert left.truncated == 1 and left.dropped == 0
  row = left.tokens[0]
  assert list(row[:1]) == [1] and list(row[-4:]) == [5, 6, 7, 1]  # EOS + tail of prompt + completion
  assert list(row[1:9]) == prompt[-8:]
  dropped = pack_records([(prompt, completion), ([3], [4])], 1, 12, "drop")
  assert dropped.dropped == 1 and len(dropped) == 1 and list(dropped.tokens[0][:4]) == [1, 3, 4, 1]
  assert math.isclose(float(dropped.weights[0].sum()), 2.0)  # "4" and the closing EOS
