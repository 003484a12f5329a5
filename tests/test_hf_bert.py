"""Hugging Face BERT interop: tiny random BertForMaskedLM / BertForSequenceClassification /
BertForTokenClassification models made by transformers are imported and exported, and their
logits match transformers' both ways (float32 rounding); the WordPiece tokenizer gives the same ids.

torch and transformers are test-only dependencies; nothing is downloaded: the models and the
vocabulary are made here.
"""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm import convert
from jaxlm.config import base_config
from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.interop import hf_bert
from jaxlm.interop.hf_files import read_hf_weights
from jaxlm.models import ModelConfig, make_model
from jaxlm.training.loop import train

SEQ = 16  # the position table's length: every row uses all of it
# Float32 rounding of two implementations (torch, XLA) summing in other orders: 1e-5 of the largest
# logit (logits here reach ~2.7; measured differences <= 7e-7).
RELATIVE_TOLERANCE = 1e-5
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "hello", "world", "paris", "alice",
         "##s", "##ing", "##ed"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = SPECIAL + list(LETTERS + ".,!?'") + [f"##{c}" for c in LETTERS] + WORDS
SENTENCES = ["The cats sat on the mat.", "Hello, World! Alice ran to Paris.",
             "dogs barking?? zzz", "ÉCOLE Ünïcödé the Cat's mat"]
ARCHITECTURES = {"lm": transformers.BertForMaskedLM,
                 "classify": transformers.BertForSequenceClassification,
                 "tag": transformers.BertForTokenClassification}
LABELS = {"lm": (), "classify": ("negative", "neutral", "positive"),
          "tag": ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")}


def hf_config(labels=(), **options) -> "transformers.BertConfig":
  """A 2-layer BERT of width 32 over VOCAB."""
  names = {"id2label": dict(enumerate(labels)),
           "label2id": {name: i for i, name in enumerate(labels)}} if labels else {}
  return transformers.BertConfig(
      vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=48, max_position_embeddings=SEQ, type_vocab_size=2, pad_token_id=0,
      **names, **options)


def save_hf_model(directory: str, model_class, config, seed: int = 0):
  """A random model with every parameter (LayerNorms and biases too) away from its init, saved
  with a BERT tokenizer (tokenizer.json + tokenizer_config.json, lowercasing)."""
  torch.manual_seed(seed)
  model = model_class(config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory, safe_serialization=True)
  vocab = {piece: i for i, piece in enumerate(VOCAB)}
  transformers.BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(directory)
  return model.eval()


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def head(request) -> str:
  return request.param


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
  """head -> the directory of a saved tiny random model with that head."""
  dirs = {}
  for name, model_class in ARCHITECTURES.items():
    dirs[name] = str(tmp_path_factory.mktemp(f"hf_bert_{name}"))
    save_hf_model(dirs[name], model_class, hf_config(LABELS[name]))
  return dirs


@pytest.fixture(scope="module")
def hf_dir(head, hf_dirs) -> str:
  return hf_dirs[head]


@pytest.fixture(scope="module")
def hf_model(head, hf_dir):
  return ARCHITECTURES[head].from_pretrained(hf_dir).eval()


def jaxlm_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxlm.convert", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(scope="module")
def import_run(hf_dirs, tmp_path_factory):
  """head -> the workdir that from-hf makes of that model (made once): through the CLI for the tag
  model, in-process for the others."""
  workdirs = {}

  def get(head: str) -> str:
    if head in workdirs:
      return workdirs[head]
    workdir = str(tmp_path_factory.mktemp(f"imported_{head}"))
    if head == "tag":
      result = jaxlm_cli("from-hf", f"--model={hf_dirs[head]}", f"--workdir={workdir}",
                         "--config.eval.batch_size=8")
      assert result.returncode == 0, result.stderr[-2000:]
      assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 0
    else:
      config = base_config()
      config.eval.batch_size = 8
      convert.from_hf(hf_dirs[head], workdir, config, {"eval.batch_size"})
    workdirs[head] = workdir
    return workdir
  return get


@pytest.fixture(scope="module")
def imported(head, import_run) -> str:
  return import_run(head)


def token_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """ids [3, SEQ] over the whole vocabulary, and token types: sentence A then B from a random
  split point of each row."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, len(VOCAB), (3, SEQ))
  types = (np.arange(SEQ)[None, :] >= rng.integers(1, SEQ, (3, 1))).astype(np.int64)
  return ids, types


def hf_logits(model, ids, types) -> np.ndarray:
  """[batch, seq, vocab or labels]; a sequence classifier's [batch, labels] is put at position 0
  (where jaxlm's classify head reads [CLS]) as [batch, 1, labels]."""
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                   attention_mask=torch.ones(ids.shape, dtype=torch.long)).logits.numpy()
  return logits[:, None] if logits.ndim == 2 else logits


def jaxlm_logits(params, model_cfg: ModelConfig, ids, types) -> np.ndarray:
  """The jaxlm model on one unpadded sequence per row; classify keeps position 0 ([CLS])."""
  positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
  apply = jax.jit(make_model(model_cfg).apply)
  logits = np.asarray(apply({"params": jax.device_get(params)}, ids, positions,
                            np.ones_like(ids), token_types=types))
  return logits[:, :1] if model_cfg.head == "classify" else logits


def assert_same_logits(ours, theirs):
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=RELATIVE_TOLERANCE * np.abs(theirs).max())


def test_import_gives_transformers_logits(head, imported, hf_model):
  run = trained.load(imported)
  cfg = run.model_cfg
  assert run.step == 0 and run.tokenizer.kind == "wordpiece"
  assert (cfg.family, cfg.head, cfg.num_labels) == ("bert", head, len(LABELS[head]))
  assert tuple(run.config.data.labels) == LABELS[head]
  assert cfg.norm_eps == 1e-12 and cfg.mlp == "gelu_exact" and cfg.type_vocab_size == 2
  # --config.* reached the run; data.seq_len defaults to the model's context.
  assert run.config.eval.batch_size == 8 and run.config.data.seq_len == SEQ
  ids, types = token_batch()
  assert_same_logits(jaxlm_logits(run.params, cfg, ids, types), hf_logits(hf_model, ids, types))


def test_export_of_an_import_reloads_in_transformers_unchanged(head, imported, hf_model, hf_dir,
                                                               tmp_path):
  out = str(tmp_path / "exported")
  assert convert.to_hf(imported, out)["tokenizer"]
  reloaded, info = ARCHITECTURES[head].from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no tensor missing, unexpected or resized
  original = hf_model.state_dict()
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  assert reloaded.config.id2label == hf_model.config.id2label or head == "lm"
  run = trained.load(imported)
  ids, types = token_batch(seed=1)
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, ids, types),
                     hf_logits(reloaded.eval(), ids, types))
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
  exported = transformers.AutoTokenizer.from_pretrained(out)
  for text in SENTENCES:
    assert run.tokenizer.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert exported(text)["input_ids"] == theirs(text)["input_ids"]  # [CLS] ... [SEP] too


def test_vocab_txt_directory_imports_the_same_tokenizer(tmp_path):
  """Older BERT directories hold vocab.txt and tokenizer_config.json, no tokenizer.json."""
  (tmp_path / "vocab.txt").write_text("".join(piece + "\n" for piece in VOCAB))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
  settings = hf_config(LABELS["tag"], architectures=["BertForTokenClassification"]).to_dict()
  fields, labels, ours = convert.read_hf_model(str(tmp_path), settings)
  assert labels == LABELS["tag"] and fields["head"] == "tag" and ours.vocab_size == len(VOCAB)
  theirs = transformers.BertTokenizer(vocab={p: i for i, p in enumerate(VOCAB)},
                                      do_lower_case=True)
  for text in SENTENCES:
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
  assert (ours.cls_id, ours.sep_id, ours.mask_id, ours.pad_id) == (2, 3, 4, 0)


def test_finetuned_import_exports_to_transformers_with_its_new_logits(import_run, hf_dirs,
                                                                      tmp_path):
  """The README's path for a classifier: from-hf -> train with init_from on {"text", "label"}
  records -> to-hf -> transformers."""
  rng = np.random.default_rng(0)
  records = [{"text": " ".join(rng.choice(WORDS[:11], 5)), "label": LABELS["classify"][k % 3]}
             for k in range(32)]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(record) + "\n" for record in records))
  config = base_config()
  config.init_from, config.model.head = import_run("classify"), "classify"
  config.data.source, config.data.path, config.data.format = "files", str(path), "classification"
  config.data.labels, config.data.seq_len, config.data.val_fraction = LABELS["classify"], SEQ, 0.25
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 2, 1
  config.train.log_every, config.eval.every, config.eval.batch_size = 1, 0, 8
  config.eval.sample_tokens, config.checkpoint.every = 0, 2
  workdir = str(tmp_path / "finetuned")
  train(config, workdir)
  run = trained.load(workdir)
  assert run.step == 2 and tuple(run.config.data.labels) == LABELS["classify"]
  out = str(tmp_path / "exported")
  convert.to_hf(workdir, out)
  reloaded = transformers.BertForSequenceClassification.from_pretrained(out).eval()
  ids, types = token_batch(seed=4)
  theirs = hf_logits(reloaded, ids, types)
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, ids, types), theirs)
  before = hf_logits(transformers.BertForSequenceClassification.from_pretrained(
      hf_dirs["classify"]).eval(), ids, types)
  assert np.abs(theirs - before).max() > 100 * RELATIVE_TOLERANCE * np.abs(theirs).max()


def read_settings(directory: str) -> dict:
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f)


def imported_params(tensors: dict, settings: dict) -> tuple[dict, ModelConfig]:
  """from-hf's parameters and model, in-process and without a workdir."""
  fields, _ = hf_bert.model_fields(settings)
  model_cfg = ModelConfig(vocab_size=settings["vocab_size"], **fields)
  return convert.params_from_hf(tensors, model_cfg), model_cfg


def test_pretraining_checkpoint_imports_its_masked_lm_and_skips_the_rest(tmp_path, capsys):
  """What bert-base-uncased's file holds: BertForPreTraining weights (a pooler and the
  next-sentence head besides the MLM head), LayerNorm tensors under their old names (gamma, beta)
  and the tied decoder saved as copies."""
  directory = str(tmp_path)
  save_hf_model(directory, transformers.BertForPreTraining, hf_config(), seed=1)
  tensors = {name.replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): value
             for name, value in read_hf_weights(directory).items()}
  tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  params, model_cfg = imported_params(tensors, read_settings(directory))
  notes = capsys.readouterr().out
  for name in ("bert.pooler.dense.weight", "cls.seq_relationship.weight",
               "cls.seq_relationship.bias"):
    assert f"note: skipped {name}" in notes
  assert model_cfg.head == "lm"
  # transformers reads the masked LM out of the same file, leaving out the same tensors.
  masked_lm = transformers.BertForMaskedLM.from_pretrained(directory).eval()
  ids, types = token_batch(seed=2)
  assert_same_logits(jaxlm_logits(params, model_cfg, ids, types),
                     hf_logits(masked_lm, ids, types))
  tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"] + 1
  with pytest.raises(UserError, match="cls.predictions.decoder.bias differs from "
                     "cls.predictions.bias, but jaxlm's BERT ties"):
    imported_params(tensors, read_settings(directory))


def test_bert_model_names_without_prefix_import_the_same(hf_dirs):
  """A body saved by BertModel has no "bert." prefix; with the head's tensors it imports alike."""
  settings = read_settings(hf_dirs["classify"])
  tensors = read_hf_weights(hf_dirs["classify"])
  bare = {name.removeprefix("bert."): value for name, value in tensors.items()}
  assert "pooler.dense.weight" in bare and "classifier.weight" in bare
  expected, model_cfg = imported_params(tensors, settings)
  got, _ = imported_params(bare, settings)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  # And back: the exported state dict is transformers' own.
  exported = hf_bert.params_to_hf(got, model_cfg)
  assert sorted(exported) == sorted(tensors)
  for name, value in exported.items():
    np.testing.assert_array_equal(value, tensors[name], err_msg=name)


def copy_with_settings(source: str, directory, **changes) -> str:
  """A copy of the model directory `source` whose config.json has `changes` (None: removed)."""
  shutil.copytree(source, directory)
  settings = {key: value for key, value in {**read_settings(source), **changes}.items()
              if value is not None}
  (directory / "config.json").write_text(json.dumps(settings))
  return str(directory)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "roberta"}, "has model_type='roberta'; jaxlm imports 'gpt2', 'bert', 't5', 'llama', 'qwen2' models"),
    ({"architectures": ["BertModel"]}, r"architectures is \['BertModel'\]; jaxlm imports one of"),
    ({"id2label": None, "label2id": None}, "BertForSequenceClassification has no id2label"),
    ({"hidden_act": "relu", "position_embedding_type": "relative_key"},
     "hidden_act='relu' .*; position_embedding_type='relative_key'"),
    ({"intermediate_size": 64}, r"intermediate.dense.weight \(48, 32\) \(expected \(64, 32\)\)"),
])
def test_import_refuses_what_it_cannot_read_in_one_line(hf_dirs, tmp_path, changes, message):
  model_dir = copy_with_settings(hf_dirs["classify"], tmp_path / "model", **changes)
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=message) as error:
    convert.from_hf(model_dir, str(workdir), base_config())
  assert "\n" not in str(error.value) and not workdir.exists()


def test_import_refuses_unknown_tensors_and_other_labels(hf_dirs):
  settings = read_settings(hf_dirs["tag"])
  tensors = read_hf_weights(hf_dirs["tag"])
  with pytest.raises(UserError, match="unexpected bert.encoder.extra.weight$"):
    imported_params({**tensors, "bert.encoder.extra.weight": np.zeros(3, np.float32)}, settings)
  fields, labels = hf_bert.model_fields(settings)
  config = base_config()
  config.data.labels = ("O", "B-X", "I-X")
  with pytest.raises(UserError, match=r"data.labels=\('O', 'B-X', 'I-X'\) differs from the "
                     "model's labels"):
    convert.imported_config(config, {"data.labels"}, fields, None, labels)


def native_run(workdir: str, tokenizer_dir: str, **model_options) -> None:
  """A jaxlm BERT tagger at step 0 with random weights (norm scales and biases perturbed)."""
  config = base_config()
  config.data.tokenizer, config.data.seq_len, config.data.labels = "wordpiece", SEQ, LABELS["tag"]
  config.model.update({"family": "bert", "head": "tag", "num_labels": len(LABELS["tag"]),
                       "norm_position": "post", "type_vocab_size": 2, "mlp": "gelu_exact",
                       "d_model": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 48,
                       "max_len": SEQ, **model_options})
  tokenizer = WordPieceTokenizer.from_hf_dir(tokenizer_dir)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  tokens = np.zeros((1, 8), np.int32)
  params = nn.unbox(make_model(model_cfg).init(jax.random.key(0), tokens, tokens, tokens + 1,
                                               token_types=tokens)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32),
                        params)
  convert.write_run(workdir, config, tokenizer, params)


def test_native_run_with_options_bert_expresses_exports_exactly(hf_dirs, tmp_path):
  """GELU-tanh, three token types and another norm_eps have a config.json form; transformers'
  logits equal jaxlm's."""
  workdir, out = str(tmp_path / "native"), str(tmp_path / "hf")
  native_run(workdir, hf_dirs["tag"], mlp="gelu", type_vocab_size=3, norm_eps=1e-6)
  assert convert.to_hf(workdir, out)["tokenizer"]
  reloaded, info = transformers.BertForTokenClassification.from_pretrained(
      out, output_loading_info=True)
  assert not any(info.values()), info
  settings = reloaded.config
  assert (settings.hidden_act, settings.type_vocab_size, settings.layer_norm_eps) == (
      "gelu_new", 3, 1e-6)
  assert [settings.id2label[i] for i in range(len(LABELS["tag"]))] == list(LABELS["tag"])
  run = trained.load(workdir)
  ids, types = token_batch(seed=3)
  types[0, -4:] = 2
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, ids, types),
                     hf_logits(reloaded.eval(), ids, types))


def test_export_refuses_what_bert_cannot_express_and_unnamed_labels():
  def run_of(labels, **options) -> trained.TrainedRun:
    config = base_config()
    config.data.labels = labels
    model_cfg = ModelConfig(**{"vocab_size": len(VOCAB), "family": "bert", "head": "classify",
                               "num_labels": 3, "norm_position": "post", "type_vocab_size": 2,
                               "mlp": "gelu_exact", "d_model": 32, "num_layers": 1,
                               "num_heads": 4, "mlp_dim": 48, "max_len": SEQ, **options})
    tokenizer = SimpleNamespace(pad_id=0, eos_id=2)  # what the config.json takes of it
    return trained.TrainedRun(config, tokenizer, model_cfg, None, None, 0)

  with pytest.raises(UserError, match="BERT cannot express this model: ") as error:
    convert.hf_model(run_of(LABELS["classify"], norm_position="pre", mlp="swiglu",
                            type_vocab_size=0, positions="rope"))
  for option in ("model.norm_position='pre'", "model.positions='rope'", "model.mlp='swiglu'",
                 "model.type_vocab_size=0"):
    assert option in str(error.value)
  with pytest.raises(UserError, match="data.labels has 0 names for its 3 labels"):
    convert.hf_model(run_of(()))
