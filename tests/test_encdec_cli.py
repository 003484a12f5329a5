"""An encoder-decoder's whole life through the verbs, at tiny sizes: span-corruption pretraining
on text files, a seq2seq finetune (init_from) on {"source", "target"} JSONL, `evaluate --task` with
greedy and beam decoding, `sample --source`, and the refusals of mismatched inputs."""

import json
import math
import os

import numpy as np
import pytest
from test_train import write_corpus

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.evaluate import evaluate_on_task
from jaxlm.inference import trained
from jaxlm.sample import check_inputs, sample
from jaxlm.inference.decode import SamplingConfig
from jaxlm.training.loop import train

WORDS = "one two three four five six seven eight nine ten".split()
GERMAN = dict(zip(WORDS, "eins zwei drei vier fuenf sechs sieben acht neun zehn".split()))


def tiny_t5_config(corpus_dir: str):
  c = base_config()
  c.data.source, c.data.path, c.data.tokenizer = "files", corpus_dir, "sentencepiece"
  c.data.vocab_size, c.data.num_sentinels = 320, 16
  c.data.seq_len = c.model.max_len = 32
  c.data.val_fraction = 0.2
  c.model.update(family="encdec", d_model=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                 mlp_dim=64, positions="relative", norm="rmsnorm", mlp="geglu", use_bias=False,
                 tie_embeddings=False, norm_eps=1e-6, relative_buckets=8,
                 relative_max_distance=16)
  c.train.batch_size, c.train.steps, c.train.lr, c.train.warmup_steps = 8, 6, 3e-3, 1
  c.train.log_every, c.eval.every, c.eval.batch_size, c.eval.max_batches = 3, 6, 8, 2
  c.eval.sample_tokens, c.checkpoint.every = 0, 6
  return c


def write_pairs(path, count: int, seed: int) -> list[dict]:
  rng = np.random.default_rng(seed)
  records = []
  for _ in range(count):
    words = list(rng.choice(WORDS, size=rng.integers(1, 4)))
    records.append({"source": " ".join(words), "target": " ".join(GERMAN[w] for w in words)})
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("encdec")
  corpus = write_corpus(root / "corpus", words=tuple(WORDS) + tuple(GERMAN.values()))
  pretrain = str(root / "t5")
  pretrained = train(tiny_t5_config(corpus), pretrain)
  train_file, test_file = root / "train.jsonl", root / "test.jsonl"
  write_pairs(train_file, 64, 0)
  references = write_pairs(test_file, 8, 1)
  c = base_config()
  c.init_from = pretrain
  c.data.source, c.data.path, c.data.format = "files", str(train_file), "seq2seq"
  c.data.val_path = str(test_file)
  c.data.seq_len, c.data.target_len = 32, 16
  c.train.batch_size, c.train.steps, c.train.warmup_steps, c.train.lr = 8, 4, 1, 3e-3
  c.train.log_every, c.eval.every, c.eval.batch_size, c.eval.sample_tokens = 2, 4, 8, 0
  c.checkpoint.every = 4
  finetune = str(root / "translate")
  finetuned = train(c, finetune)
  return pretrain, pretrained, finetune, finetuned, str(test_file), references


def test_pretraining_and_finetuning_report_target_metrics(runs):
  _, pretrained, _, finetuned, _, _ = runs
  for result in (pretrained, finetuned):
    assert {"loss", "perplexity", "target_accuracy", "target_tokens"} <= set(result)
    assert "bits_per_byte" not in result  # the source is seen: no meaning for an encdec
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-6)
  assert finetuned["target_tokens"] == sum(  # every target piece and its EOS, nothing else
      len(t) + 1 for t in trained.load(runs[2]).tokenizer.encode_batch(
          [r["target"] for r in runs[5]]))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_evaluate_task_prints_translation_metrics(runs, beam_size):
  _, _, finetune, _, test_file, references = runs
  metrics = evaluate_on_task(finetune, None, {}, test_file, 8, "\n", "", beam_size)
  assert {"bleu", "chrf", "rougeL", "exact_match", "completion_perplexity"} <= set(metrics)
  assert metrics["examples"] == len(references) and metrics["beam_size"] == beam_size
  assert 0.0 <= metrics["chrf"] <= 100.0 and metrics["completion_perplexity"] > 1.0
  suffix = f"_beam{beam_size}" if beam_size > 1 else ""  # greedy and beam results side by side
  assert os.path.isfile(os.path.join(finetune, "predictions", f"test_step4{suffix}.jsonl"))


def test_sample_generates_targets_for_a_source(runs):
  finetune = runs[2]
  greedy = sample(finetune, None, "", SamplingConfig(6, 0.0), 2, 0, source="one two")
  assert len(greedy) == 2 and greedy[0] == greedy[1]  # greedy: the same target twice
  with pytest.raises(UserError, match="give the text to transform as --source"):
    sample(finetune, None, "one", SamplingConfig(6, 0.0), 1, 0)
  with pytest.raises(UserError, match="an encoder-decoder reads --source alone"):
    sample(finetune, None, "one", SamplingConfig(6, 0.0), 1, 0, source="one")
  with pytest.raises(UserError, match="--source is an encoder-decoder's input"):
    check_inputs("gpt", "", "one two")
