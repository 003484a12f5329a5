"""Bad input to BERT runs: one line `error: ...; fix`, exit status 2, nothing half-written (the
contract of test_errors.py, whose helpers check it and look each message up in docs/errors.md)."""

import json
import os

import pytest
from test_cli import jaxlm
from test_errors import cases, tree_hash, user_error

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
BERT_TINY = """
from jaxlm.config import base_config

def get_config():
  c = base_config()
  c.data.source, c.data.tokenizer, c.data.vocab_size = "files", "wordpiece", 120
  c.data.path, c.data.val_path = {train!r}, {val!r}
  c.data.seq_len = c.model.max_len = 16
  c.model.family, c.model.head, c.model.norm_position = "bert", {head!r}, "post"
  c.model.mlp, c.model.type_vocab_size = "gelu_exact", 2
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 16, 1, 2, 32
  c.train.batch_size, c.train.steps, c.train.warmup_steps = 8, 2, 1
  c.eval.every, c.eval.batch_size, c.eval.sample_tokens = 0, 8, 0
  c.checkpoint.every = 2
  return c
"""


def write_jsonl(path, records) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(path)


def classification_records(n: int, labels=("a", "b")) -> list[dict]:
  return [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(5)),
           "label": labels[i % len(labels)]} for i in range(n)]


def tagging_records(n: int) -> list[dict]:
  return [{"tokens": WORDS[i % 6:i % 6 + 4], "tags": ["B-X", "I-X", "O", "O"]} for i in range(n)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("bert_errors")


def config_file(root, name: str, head: str, train: str, val: str) -> str:
  path = root / f"{name}.py"
  path.write_text(BERT_TINY.format(train=train, val=val, head=head))
  return str(path)


BAD = {
    "label_missing": ("classify", [{"text": "alpha beta", "label": "a"}, {"text": "gamma"}]),
    "label_of_wrong_type": ("classify", [{"text": "alpha beta", "label": 1.5}]),
    "tags_and_tokens_of_different_lengths": (
        "tag", [{"tokens": ["alpha", "beta"], "tags": ["B-X", "I-X"]},
                {"tokens": ["alpha", "beta", "gamma"], "tags": ["O"]}]),
}


@pytest.mark.parametrize("case, expected", cases(
    ("label_missing", "labels.jsonl:2: the record has no 'label'"),
    ("label_of_wrong_type", "labels.jsonl:1: label 1.5 is a number; a label must be a string"),
    ("tags_and_tokens_of_different_lengths", "labels.jsonl:2: 3 tokens but 1 tags"),
))
def test_bad_labelled_records(root, case, expected):
  head, records = BAD[case]
  data = write_jsonl(root / case / "labels.jsonl", records)
  config = config_file(root, case, head, data, data)
  workdir = root / case / "run"
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}")
  line = user_error(result, root, case)
  assert expected in line.replace(str(root), "DIR"), line
  assert not workdir.exists()


@pytest.mark.parametrize("case, extra, expected", cases(
    ("head_does_not_fit_the_data", ["--config.model.head=lm"],
     "data.format=classification needs model.head='classify', but this run has 'lm'"),
    ("bert_without_wordpiece", ["--config.data.tokenizer=char"],
     "a bert run needs data.tokenizer=wordpiece"),
))
def test_bert_settings_that_do_not_fit(root, case, extra, expected):
  data = write_jsonl(root / case / "train.jsonl", classification_records(32))
  config = config_file(root, case, "classify", data, data)
  workdir = root / case / "run"
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}", *extra)
  assert expected in user_error(result, root, case)
  assert not workdir.exists()


@pytest.fixture(scope="module")
def classify_run(root):
  """A finished 2-step classification run: (workdir, its tree hash)."""
  train = write_jsonl(root / "data" / "train.jsonl", classification_records(48))
  val = write_jsonl(root / "data" / "val.jsonl", classification_records(16))
  config = config_file(root, "classify", "classify", train, val)
  workdir = root / "run"
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return str(workdir), tree_hash(workdir)


def test_unknown_label_at_evaluation(root, classify_run):
  workdir, before = classify_run
  other = write_jsonl(root / "data" / "other.jsonl", classification_records(16, ("a", "zzz")))
  result = jaxlm("evaluate", f"--workdir={workdir}", f"--config.data.val_path={other}")
  line = user_error(result, root, "unknown_label_at_evaluation", workdir=workdir)
  assert "the val split has label 'zzz', not among the run's labels (a, b)" in line
  assert tree_hash(workdir) == before


def test_sampling_from_an_encoder(root, classify_run):
  workdir, before = classify_run
  result = jaxlm("sample", f"--workdir={workdir}", "--prompt=alpha")
  line = user_error(result, root, "sample_from_bert", workdir=workdir)
  assert "holds a bert run: an encoder has no next-token head" in line
  assert tree_hash(workdir) == before
