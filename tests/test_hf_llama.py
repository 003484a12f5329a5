"""Hugging Face Llama and Qwen2 interop: tiny random models made by transformers (grouped-query
attention; Llama 3 RoPE scaling; Qwen2's q/k/v biases), in sharded safetensors with a tokenizer.json
and a chat template, are imported, compared, finetuned (fully and with LoRA) and exported; their
logits match transformers' at every stage, and greedy decoding matches `generate`.

torch and transformers are test-only dependencies; nothing is downloaded.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import tokenizers
from test_hf_gpt2 import (CORPUS, assert_greedy_matches_generate, assert_same_logits, hf_logits,
                          jaxlm_logits, token_batch)

from jaxlm import convert
from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.interop import hf_llama
from jaxlm.training.loop import train

CONTEXT = 64  # token_batch's rows are this long
EOS = "<|endoftext|>"
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=CONTEXT, rms_norm_eps=1e-6)
CONFIGS = {
    # Llama 3.1: base 500000 with llama3 scaling (original context 16, so every band is used at
    # these positions), untied head.
    "llama": lambda vocab, eos: transformers.LlamaConfig(
        vocab_size=vocab, eos_token_id=eos, bos_token_id=eos, tie_word_embeddings=False,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 16}, **SHAPE),
    # Qwen2: q/k/v biases, base 1e6, tied embeddings.
    "qwen2": lambda vocab, eos: transformers.Qwen2Config(
        vocab_size=vocab, eos_token_id=eos, bos_token_id=eos, tie_word_embeddings=True,
        rope_theta=1e6, **SHAPE),
}
MODELS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def write_tokenizer(directory) -> tuple[int, int]:
  """A byte-level BPE tokenizer.json and a tokenizer_config.json with a chat template."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=[EOS], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS,
               "chat_template": CHAT_TEMPLATE}, f)
  return tok.get_vocab_size(), tok.token_to_id(EOS)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_dir(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  vocab, eos = write_tokenizer(directory)
  torch.manual_seed(0)
  model = getattr(transformers, MODELS[request.param])(CONFIGS[request.param](vocab, eos))
  with torch.no_grad():
    for p in model.parameters():  # norms and biases away from their init too
      p.add_(0.1 * torch.randn_like(p))
  # Shards of ~100 kB: the import reads the index and several files.
  model.save_pretrained(directory, safe_serialization=True, max_shard_size="100KB")
  assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
  return directory, request.param


@pytest.fixture(scope="module")
def hf_model(hf_dir):
  return getattr(transformers, MODELS[hf_dir[1]]).from_pretrained(hf_dir[0]).eval()


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("imported"))
  config = base_config()
  config.eval.batch_size = 8
  convert.from_hf(hf_dir[0], workdir, config, {"eval.batch_size"})
  return workdir


def test_import_gives_transformers_logits(imported, hf_model, hf_dir):
  run = trained.load(imported)
  cfg = run.model_cfg
  assert (cfg.kv_heads, cfg.qkv_bias, cfg.tie_embeddings) == (
      (2, False, False) if hf_dir[1] == "llama" else (2, True, True))
  assert cfg.rope_scaling == ("llama3" if hf_dir[1] == "llama" else "none")
  batch = token_batch(cfg.vocab_size)
  assert_same_logits(jaxlm_logits(run.params, cfg, *batch), hf_logits(hf_model, *batch), batch[2])


def test_tokenizer_and_chat_template_come_over(imported, hf_dir):
  ours = trained.load(imported).tokenizer
  # The tokenizer.json itself (transformers 5's AutoTokenizer rebuilds a Qwen2 tokenizer from its
  # vocabulary with its own pre-tokenizer rather than reading the file's).
  theirs = transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(hf_dir[0], "tokenizer.json"), eos_token=EOS)
  for text in ["def sub(a, b):\n    return a - b\n", "  tabs\tand ünïcödé 日本\n"]:
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ours.encode(text)) == text
  assert ours.kind == "hf" and ours.eos_id == theirs.eos_token_id
  assert ours.chat_template == CHAT_TEMPLATE


def test_greedy_decoding_matches_transformers_generate(imported, hf_model):
  assert_greedy_matches_generate(imported, hf_model)


def test_export_of_an_import_reloads_unchanged(imported, hf_model, hf_dir, tmp_path):
  out = str(tmp_path / "exported")
  assert convert.to_hf(imported, out)["tokenizer"]
  reloaded = getattr(transformers, MODELS[hf_dir[1]]).from_pretrained(out).eval()
  original = hf_model.state_dict()
  assert set(reloaded.state_dict()) == set(original)
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  assert reloaded.config.num_key_value_heads == 2
  batch = token_batch(hf_model.config.vocab_size, seed=1)
  assert_same_logits(hf_logits(reloaded, *batch), hf_logits(hf_model, *batch), batch[2])
  assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE


def finetune(imported, tmp_path, name, **lora):
  corpus = tmp_path / "corpus"
  corpus.mkdir(exist_ok=True)
  for k in range(4):
    (corpus / f"doc{k}.txt").write_text("".join(CORPUS[k::4]))
  config = base_config()
  config.init_from = imported
  config.data.source, config.data.path, config.data.seq_len = "files", str(corpus), 32
  config.data.val_fraction = 0.25
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 3, 1
  config.train.lr = 1e-2
  config.train.log_every, config.eval.every, config.eval.batch_size = 1, 0, 8
  config.eval.sample_tokens, config.checkpoint.every = 0, 3
  config.train.lora.update(lora)
  workdir = str(tmp_path / name)
  train(config, workdir)
  return workdir


@pytest.mark.parametrize("lora", [{}, {"rank": 4}], ids=["full", "lora"])
def test_finetuned_import_exports_with_its_new_logits(imported, hf_model, hf_dir, tmp_path, lora):
  """from-hf -> train (full, or LoRA: exported merged) -> to-hf -> transformers."""
  workdir = finetune(imported, tmp_path, "finetuned", **lora)
  run = trained.load(workdir)
  out = str(tmp_path / "exported")
  convert.to_hf(workdir, out)
  reloaded = getattr(transformers, MODELS[hf_dir[1]]).from_pretrained(out).eval()
  batch = token_batch(run.model_cfg.vocab_size, seed=2)
  theirs = hf_logits(reloaded, *batch)
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, *batch), theirs, batch[2])
  moved = np.abs(theirs - hf_logits(hf_model, *batch)).max() / np.abs(theirs).max()
  assert moved > 1e-3  # it did train
  if lora:  # its adapters alone, through PEFT onto the exported base
    peft = pytest.importorskip("peft")
    convert.to_hf(imported, str(tmp_path / "base"))
    convert.to_hf(workdir, str(tmp_path / "adapters"), adapters_only=True)
    base = getattr(transformers, MODELS[hf_dir[1]]).from_pretrained(str(tmp_path / "base"))
    adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapters")).eval()
    assert_same_logits(jaxlm_logits(run.params, run.model_cfg, *batch),
                       hf_logits(adapted, *batch), batch[2])
    # from-hf --peft: PEFT's separate A of k and v (and of gate and up) side by side on jaxlm's
    # fused kv (and wi) kernel, rank 2 x 4; the same logits.
    config = base_config()
    config.init_from = imported
    assert convert.from_peft(str(tmp_path / "adapters"), str(tmp_path / "back"),
                             config)["rank"] == 8
    back = trained.load(str(tmp_path / "back"))
    assert_same_logits(jaxlm_logits(back.params, back.model_cfg, *batch),
                       hf_logits(adapted, *batch), batch[2])


def test_features_jaxlm_lacks_are_named_in_one_error():
  settings = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
              "attention_bias": True, "hidden_act": "gelu",
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
  with pytest.raises(UserError) as error:
    hf_llama.model_fields(settings)
  message = str(error.value)
  assert message.startswith("this LlamaForCausalLM has features jaxlm lacks: ")
  for feature in ("attention_bias=True", "hidden_act='gelu'", "rope_scaling type 'yarn'"):
    assert feature in message


@pytest.mark.parametrize("hf_dir", ["llama"], indirect=True)  # one layout is enough for the CLI
def test_cli_import_of_unsupported_features_fails_in_one_line(hf_dir, tmp_path):
  from test_hf_gpt2 import jaxlm_cli
  model_dir = tmp_path / "model"
  os.makedirs(model_dir)
  for name in os.listdir(hf_dir[0]):
    os.symlink(os.path.join(hf_dir[0], name), model_dir / name)
  with open(os.path.join(hf_dir[0], "config.json")) as f:
    settings = json.load(f)
  settings.update(attention_bias=True, rope_parameters={"rope_type": "yarn", "factor": 4.0})
  os.remove(model_dir / "config.json")
  (model_dir / "config.json").write_text(json.dumps(settings))
  result = jaxlm_cli("from-hf", f"--model={model_dir}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line == ("error: this LlamaForCausalLM has features jaxlm lacks: attention_bias=True "
                  "(jaxlm supports False); rope_scaling type 'yarn' (jaxlm has llama3 scaling "
                  "or none)")
  assert not os.path.exists(tmp_path / "run")
