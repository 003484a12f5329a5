"""Hugging Face T5 interop: a tiny random `T5ForConditionalGeneration` (v1.1 layout: gated-GELU,
RMSNorm, no biases, relative positions, untied head; d_kv != d_model / heads) made by transformers
with a SentencePiece tokenizer trained here (100 <extra_id_N> sentinels) is read into jaxlm and a
random jaxlm encdec model is written out as one; logits agree within 1e-4 both ways, greedy
decoding equals `generate`, and the tokenizer encodes as transformers' does, before and after the
round trip.

torch and transformers are test-only dependencies; nothing is downloaded.
"""

import io
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import sentencepiece as spm  # noqa: E402

from jaxlm import convert  # noqa: E402
from jaxlm.config import base_config  # noqa: E402
from jaxlm.data.hf_tokenizer import HfTokenizer  # noqa: E402
from jaxlm.errors import UserError  # noqa: E402
from jaxlm.inference.decode import SamplingConfig  # noqa: E402
from jaxlm.inference.seq2seq import generate_seq2seq, right_pad  # noqa: E402
from jaxlm.interop import hf_t5  # noqa: E402
from jaxlm.interop.hf_files import LazyTensors  # noqa: E402
from jaxlm.inference import trained  # noqa: E402
from jaxlm.models import EncDec, ModelConfig  # noqa: E402
from jaxlm.training.loop import train  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog", "a translation of this sentence",
        "hello world, good morning", "Das ist ein kleiner Satz über die Übersetzung"] * 20
VOCAB = 200  # the model's; the tokenizer has 48 pieces + 100 sentinels (T5 pads it too)
SHAPE = dict(d_model=32, d_kv=16, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=20,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
             layer_norm_epsilon=1e-6, n_positions=32)


def write_tokenizer(directory: str) -> None:
  """T5's tokenizer files (tokenizer.json, tokenizer_config.json) of a SentencePiece unigram
  model trained here, with T5's ids: pad 0, EOS 1, unk 2, sentinels after the pieces."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_writer=model,
                                 vocab_size=48, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
  spiece_dir = os.path.join(directory, "spiece")
  os.makedirs(spiece_dir)
  with open(os.path.join(spiece_dir, "spiece.model"), "wb") as f:
    f.write(model.getvalue())
  transformers.T5Tokenizer.from_pretrained(spiece_dir, extra_ids=100).save_pretrained(directory)


def save_v4_style(model, directory: str) -> None:
  """The model as T5 v1.1 / Flan-T5 checkpoints are published (written by transformers 4): an
  lm_head of its own, `tie_word_embeddings: false` in config.json, shared embedding saved once."""
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if k not in hf_t5.TIED_COPIES}
  safetensors.torch.save_file(state, os.path.join(directory, "model.safetensors"),
                              metadata={"format": "pt"})
  settings = {**model.config.to_dict(), "tie_word_embeddings": False,
              "architectures": [hf_t5.ARCHITECTURE]}
  settings.pop("scale_decoder_outputs", None)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(settings, f)


def random_t5(seed: int):
  torch.manual_seed(seed)
  config = transformers.T5Config(vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=1, **SHAPE)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for p in model.parameters():  # norm scales away from 1; sharper attention
      p.add_(0.1 * torch.randn_like(p)) if p.ndim == 1 else p.mul_(2.0)
  return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A v1.1 checkpoint with an untied lm_head, and transformers' model read from it."""
  directory = str(tmp_path_factory.mktemp("t5"))
  write_tokenizer(directory)
  model = random_t5(0)
  # transformers 5 builds T5 with lm_head tied to shared: give it a head of its own.
  model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, SHAPE["d_model"]))
  save_v4_style(model, directory)
  reference = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
  assert torch.equal(reference.lm_head.weight, model.lm_head.weight)
  return directory, reference


def settings_of(directory: str) -> dict:
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f)


def jaxlm_cfg(settings: dict) -> ModelConfig:
  return ModelConfig(vocab_size=settings["vocab_size"], **hf_t5.model_fields(settings))


def batch():
  """Sources of different lengths (right-padded) and decoder inputs, as lists and arrays."""
  rng = np.random.default_rng(0)
  sources = [rng.integers(2, VOCAB, n).tolist() for n in (11, 6, 9)]
  decoder_inputs = np.concatenate([np.zeros((3, 1), np.int64),
                                   rng.integers(2, VOCAB, (3, 7))], axis=1)
  return sources, decoder_inputs


def hf_logits(model, sources, decoder_inputs) -> np.ndarray:
  tokens, _, segments = right_pad(sources)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(segments, dtype=torch.long),
                decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long))
  return out.logits.numpy()


def jaxlm_logits(params, cfg, sources, decoder_inputs) -> np.ndarray:
  enc = right_pad(sources)
  dec = right_pad(decoder_inputs.tolist())
  apply = jax.jit(lambda p, enc, dec: EncDec(cfg).apply(
      {"params": p}, *dec, encoder_inputs=enc[0], encoder_positions=enc[1],
      encoder_segment_ids=enc[2]))
  return np.asarray(apply(params, enc, dec))


@pytest.fixture(scope="module")
def imported(hf_dir):
  directory, _ = hf_dir
  cfg = jaxlm_cfg(settings_of(directory))
  return cfg, hf_t5.params_from_hf(LazyTensors(directory), cfg)


def test_config_maps_to_the_encdec_options(imported):
  cfg, _ = imported
  assert (cfg.family, cfg.head_dim, cfg.num_layers, cfg.decoder_layers, cfg.mlp_dim) == (
      "encdec", 16, 2, 3, 48)
  assert (cfg.relative_buckets, cfg.relative_max_distance, cfg.tie_embeddings) == (8, 20, False)


def test_imported_logits_match_transformers(hf_dir, imported):
  _, model = hf_dir
  cfg, params = imported
  sources, decoder_inputs = batch()
  expected = hf_logits(model, sources, decoder_inputs)
  assert np.abs(expected).max() > 1.0  # logits that a misplaced weight would visibly change
  np.testing.assert_allclose(jaxlm_logits(params, cfg, sources, decoder_inputs), expected,
                             atol=1e-4, rtol=1e-4)


def test_greedy_decoding_equals_generate(hf_dir, imported):
  _, model = hf_dir
  cfg, params = imported
  sources, _ = batch()
  tokens, _, segments = right_pad(sources)
  with torch.no_grad():
    expected = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                              attention_mask=torch.tensor(segments, dtype=torch.long),
                              max_new_tokens=10, num_beams=1, do_sample=False, eos_token_id=1,
                              pad_token_id=0, decoder_start_token_id=0,
                              # transformers 5.24 sizes its cache by num_layers, not the
                              # decoder's 3: generate without one.
                              use_cache=False).numpy()
  ours = generate_seq2seq(params, cfg, sources, SamplingConfig(max_new_tokens=10, temperature=0),
                          eos_id=1, decoder_start_id=0)
  for row, out in zip(expected.tolist(), ours):
    row = row[1:]  # generate's rows start with the decoder start id
    assert out == (row[:row.index(1)] if 1 in row else row)
  assert max(len(out) for out in ours) >= 3  # not all stopped at once


def test_exported_model_matches_in_transformers(tmp_path):
  cfg = jaxlm_cfg({"vocab_size": VOCAB, **SHAPE})
  tokens = np.zeros((1, 4), np.int32)
  params = nn.unbox(EncDec(cfg).init(jax.random.key(3), tokens, tokens, tokens + 1,
                                     encoder_inputs=tokens, encoder_positions=tokens,
                                     encoder_segment_ids=tokens + 1)["params"])
  leaves, tree = jax.tree.flatten(jax.tree.map(np.asarray, params))
  rng = np.random.default_rng(1)
  # Weights x4 (the 0.02 init gives flat attention); norm scales moved off 1.
  leaves = [x * 4 if x.ndim >= 2 and x.shape[0] != VOCAB else x + 0.1 * rng.normal(size=x.shape)
            for x in leaves]
  params = jax.tree.unflatten(tree, [x.astype(np.float32) for x in leaves])
  safetensors.numpy.save_file(hf_t5.params_to_hf(params, cfg),
                              os.path.join(tmp_path, "model.safetensors"),
                              metadata={"format": "pt"})
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump(hf_t5.hf_settings(cfg, eos_id=1), f)
  model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  sources, decoder_inputs = batch()
  np.testing.assert_allclose(jaxlm_logits(params, cfg, sources, decoder_inputs),
                             hf_logits(model, sources, decoder_inputs), atol=1e-4, rtol=1e-4)


def test_transformers_5_files_with_a_tied_unscaled_head_import(tmp_path):
  model = random_t5(1)  # lm_head is shared.weight; T5 v1.1 does not scale the decoder output
  with torch.no_grad():
    model.shared.weight.mul_(0.25)  # logits O(1-10), as the other tests' (float32 rounding)
  model.save_pretrained(str(tmp_path), safe_serialization=True)
  settings = settings_of(str(tmp_path))
  cfg = jaxlm_cfg(settings)
  assert not cfg.tie_embeddings
  params = hf_t5.params_from_hf(LazyTensors(str(tmp_path)), cfg)
  sources, decoder_inputs = batch()
  np.testing.assert_allclose(jaxlm_logits(params, cfg, sources, decoder_inputs),
                             hf_logits(model, sources, decoder_inputs), atol=1e-4, rtol=1e-4)


def test_tokenizer_encodes_as_transformers_with_sentinels(hf_dir, tmp_path):
  directory, _ = hf_dir
  settings = settings_of(directory)
  tok = HfTokenizer.from_hf_dir(directory, settings)
  reference = transformers.AutoTokenizer.from_pretrained(directory)
  text = "the quick <extra_id_0> fox over <extra_id_99> Übersetzung"
  ids = reference(text).input_ids
  assert ids[-1] == 1 and tok.eos_id == 1  # transformers appends </s>; jaxlm packs its own EOS
  assert tok.encode(text) == ids[:-1]
  assert tok.vocab_size == VOCAB
  assert tok.encode("<extra_id_0>") == [147] and tok.encode("<extra_id_99>") == [48]
  # Span corruption's sentinels: transformers' own ids of <extra_id_0> ... <extra_id_99>.
  assert tok.sentinel_ids == tuple(
      reference.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(100)]))
  tok.save_hf_files(str(tmp_path), 32)
  assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text).input_ids == ids


def test_t5_options_jaxlm_lacks_are_refused(hf_dir, tmp_path):
  from test_errors import documented
  model_dir = tmp_path / "model"
  os.makedirs(model_dir)
  for name in os.listdir(hf_dir[0]):
    if name != "config.json":
      os.symlink(os.path.join(hf_dir[0], name), model_dir / name)
  settings = {**settings_of(hf_dir[0]), "feed_forward_proj": "relu"}  # T5 v1.0
  (model_dir / "config.json").write_text(json.dumps(settings))
  with pytest.raises(UserError, match="feed_forward_proj='relu'") as error:
    convert.from_hf(str(model_dir), str(tmp_path / "run"), base_config())
  documented("t5_relu", f"error: {error.value}")
  assert not (tmp_path / "run").exists()
  cfg = ModelConfig(vocab_size=64, family="encdec", d_model=32, num_layers=1, num_heads=4,
                    mlp_dim=32, max_len=16, positions="sinusoidal")
  problems = hf_t5.inexpressible(cfg)
  assert any("positions='sinusoidal'" in p for p in problems)


@pytest.fixture(scope="module")
def imported_run(hf_dir, tmp_path_factory):
  """`convert from-hf` of the checkpoint into a jaxlm workdir."""
  workdir = str(tmp_path_factory.mktemp("t5_run") / "run")
  config = base_config()
  config.eval.batch_size = 8
  convert.from_hf(hf_dir[0], workdir, config, {"eval.batch_size"})
  return workdir


def test_cli_import_then_export_reloads_unchanged(hf_dir, imported_run, tmp_path):
  directory, reference = hf_dir
  run = trained.load(imported_run)
  assert run.model_cfg.family == "encdec" and run.tokenizer.kind == "hf"
  sources, decoder_inputs = batch()
  np.testing.assert_allclose(jaxlm_logits(run.params, run.model_cfg, sources, decoder_inputs),
                             hf_logits(reference, sources, decoder_inputs), atol=1e-4, rtol=1e-4)
  out = str(tmp_path / "exported")
  assert convert.to_hf(imported_run, out)["tokenizer"]
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  for name, value in reference.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), value.numpy(),
                                  err_msg=name)
  text = "the quick <extra_id_0> fox"
  assert (transformers.AutoTokenizer.from_pretrained(out)(text).input_ids ==
          transformers.AutoTokenizer.from_pretrained(directory)(text).input_ids)


def test_seq2seq_finetune_of_an_import_exports_with_its_new_logits(hf_dir, imported_run,
                                                                   tmp_path):
  """from-hf -> seq2seq finetune -> to-hf -> transformers."""
  records = [{"source": TEXT[i % 4], "target": TEXT[(i + 1) % 4][:20]} for i in range(32)]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  config = base_config()
  config.init_from = imported_run
  config.data.source, config.data.path, config.data.format = "files", str(path), "seq2seq"
  config.data.seq_len, config.data.target_len, config.data.val_fraction = 32, 24, 0.25
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 3, 1
  config.train.lr = 1e-2
  config.train.log_every, config.eval.every, config.eval.batch_size = 1, 0, 8
  config.eval.sample_tokens, config.checkpoint.every = 0, 3
  workdir = str(tmp_path / "finetuned")
  train(config, workdir)
  run = trained.load(workdir)
  out = str(tmp_path / "exported")
  convert.to_hf(workdir, out)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  sources, decoder_inputs = batch()
  theirs = hf_logits(reloaded, sources, decoder_inputs)
  np.testing.assert_allclose(jaxlm_logits(run.params, run.model_cfg, sources, decoder_inputs),
                             theirs, atol=1e-4, rtol=1e-4)
  moved = np.abs(theirs - hf_logits(hf_dir[1], sources, decoder_inputs)).max()
  assert moved > 1e-2  # it did train
