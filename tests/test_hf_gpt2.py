"""Hugging Face GPT-2 interop: a tiny random GPT-2 made by transformers is imported, evaluated,
finetuned and exported, and its logits match transformers' at every stage (float32 rounding).

torch and transformers are test-only dependencies; nothing is downloaded: the model and its
byte-level BPE tokenizer are made here.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tokenizers.implementations import ByteLevelBPETokenizer

from jaxlm import convert
from jaxlm.config import base_config, from_saved
from jaxlm.data import train_tokenizer
from jaxlm.data.gpt2_tokenizer import EOS_TOKEN
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.inference.decode import SamplingConfig, generate, left_pad
from jaxlm.interop import hf_gpt2
from jaxlm.models import GPT, ModelConfig
from jaxlm.training import checkpoint
from jaxlm.training.loop import train

CONTEXT = 64
# Float32 rounding of two implementations (torch, XLA) summing in other orders: 1e-5 of the largest
# logit (logits here reach ~2.4; measured differences ~1.5e-6).
RELATIVE_TOLERANCE = 1e-5
CORPUS = ["def add(a, b):\n    return a + b\n", "The cat sat on the mat. The dog ran.\n",
          "for i in range(10):\n\tprint(i, 'héllo wörld')\n"] * 30


def make_hf_model(directory, vocab_size: int, eos_id: int, seed: int = 0):
  """A random 2-layer GPT-2 with every parameter (LayerNorms and biases too) away from its init."""
  torch.manual_seed(seed)
  config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size,
                                   n_positions=CONTEXT, bos_token_id=eos_id, eos_token_id=eos_id)
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory, safe_serialization=True)
  return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A Hugging Face GPT-2 directory as the hub has them: config.json, model.safetensors, vocab.json
  and merges.txt (no tokenizer.json, so the GPT-2 file pair is what gets imported)."""
  directory = str(tmp_path_factory.mktemp("hf_gpt2"))
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(CORPUS, vocab_size=300, special_tokens=[EOS_TOKEN], show_progress=False)
  bpe.save_model(directory)
  eos_id = bpe.token_to_id(EOS_TOKEN)
  make_hf_model(directory, bpe.get_vocab_size(), eos_id)
  return directory


@pytest.fixture(scope="module")
def hf_model(hf_dir):
  return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


def jaxlm_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxlm.convert", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
  """The workdir `python -m jaxlm.convert from-hf` makes of hf_dir."""
  workdir = str(tmp_path_factory.mktemp("imported"))
  result = jaxlm_cli("from-hf", f"--model={hf_dir}", f"--workdir={workdir}",
                     "--config.eval.batch_size=8")
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 0
  return workdir


def token_batch(vocab_size: int, seed: int = 0):
  """[4, CONTEXT] ids: two full rows (every position of the table) and two left-padded rows.
  Returns ids, positions, segment_ids (0 = padding) and the HF attention mask."""
  rng = np.random.default_rng(seed)
  lengths = [CONTEXT, CONTEXT, CONTEXT - 9, 17]
  ids, positions, segments = left_pad([rng.integers(0, vocab_size, n) for n in lengths])
  return ids, positions, segments


def hf_logits(model, ids, positions, segments) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(segments, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.numpy()


def jaxlm_logits(params, model_cfg: ModelConfig, ids, positions, segments) -> np.ndarray:
  apply = jax.jit(GPT(model_cfg).apply)
  return np.asarray(apply({"params": jax.device_get(params)}, ids, positions, segments))


def assert_same_logits(a, b, segments):
  real = segments > 0  # padded slots compute nothing anyone reads
  np.testing.assert_allclose(a[real], b[real], rtol=0,
                             atol=RELATIVE_TOLERANCE * np.abs(b[real]).max())


def test_import_gives_transformers_logits(imported, hf_model):
  run = trained.load(imported)
  assert run.step == 0 and run.tokenizer.kind == "gpt2_bpe"
  assert run.model_cfg.norm_eps == 1e-5 and run.model_cfg.mlp_dim == 128
  # --config.* reached the run; data.seq_len defaults to the model's context.
  assert run.config.eval.batch_size == 8 and run.config.data.seq_len == CONTEXT
  batch = token_batch(run.model_cfg.vocab_size)
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, *batch),
                     hf_logits(hf_model, *batch), batch[2])


def test_imported_tokenizer_encodes_as_transformers_does(imported, hf_dir):
  ours = trained.load(imported).tokenizer
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
  for text in ["def sub(a, b):\n    return a - b\n", "  tabs\tand ünïcödé 日本\n", "x" * 50]:
    assert ours.encode(text) == theirs(text)["input_ids"]
    assert ours.decode(ours.encode(text)) == text
  assert ours.eos_id == theirs.eos_token_id


def assert_greedy_matches_generate(workdir: str, hf_model) -> None:
  """12 greedy tokens of the jaxlm run in `workdir` equal transformers' `generate` on `hf_model`."""
  run = trained.load(workdir)
  prompt = run.tokenizer.encode("def add(")
  ours = generate(jax.device_get(run.params), run.model_cfg, [prompt],
                  SamplingConfig(max_new_tokens=12, temperature=0.0), seed=0)[0]
  with torch.no_grad():
    theirs = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                               max_new_tokens=12, do_sample=False, eos_token_id=None,
                               pad_token_id=run.tokenizer.eos_id)
  assert list(ours) == theirs[0, len(prompt):].tolist()


def test_greedy_sampling_matches_transformers_generate(imported, hf_model):
  assert_greedy_matches_generate(imported, hf_model)


def test_export_of_an_import_reloads_in_transformers_unchanged(imported, hf_model, hf_dir,
                                                               tmp_path):
  out = str(tmp_path / "exported")
  assert convert.to_hf(imported, out)["tokenizer"]
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  original = hf_model.state_dict()
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  batch = token_batch(hf_model.config.vocab_size, seed=1)
  assert_same_logits(hf_logits(reloaded, *batch), hf_logits(hf_model, *batch), batch[2])
  text = "The cat ran on the mat.\n"
  assert (transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] ==
          transformers.AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"])


def test_finetuned_import_exports_to_transformers_with_its_new_logits(imported, hf_model, tmp_path):
  """The README's path: from-hf -> train with init_from -> to-hf -> transformers."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for k in range(4):
    (corpus / f"doc{k}.txt").write_text("".join(CORPUS[k::4]))
  config = base_config()
  config.init_from = imported
  config.data.source, config.data.path, config.data.seq_len = "files", str(corpus), 32
  config.data.val_fraction = 0.25
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 3, 1
  config.train.log_every, config.eval.every, config.eval.batch_size = 1, 0, 8
  config.eval.sample_tokens, config.checkpoint.every = 0, 3
  workdir = str(tmp_path / "finetuned")
  train(config, workdir)
  run = trained.load(workdir)
  assert run.step == 3 and run.tokenizer.to_json() == trained.load(imported).tokenizer.to_json()
  out = str(tmp_path / "exported")
  convert.to_hf(workdir, out)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  batch = token_batch(run.model_cfg.vocab_size, seed=2)
  theirs = hf_logits(reloaded, *batch)
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, *batch), theirs, batch[2])
  moved = np.abs(theirs - hf_logits(hf_model, *batch)).max() / np.abs(theirs).max()
  assert moved > 100 * RELATIVE_TOLERANCE  # it did train


def test_import_saves_parameters_only_and_training_it_starts_a_fresh_optimizer(hf_dir, tmp_path):
  """The import writes no optimizer state (it would be zeros: 2x the model under AdamW, held and
  staged by the save); `train` on the imported workdir itself starts one and then checkpoints
  whole states that resume as usual."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "doc.txt").write_text("".join(CORPUS))
  data = ["--config.data.source=files", f"--config.data.path={corpus}",
          "--config.data.seq_len=32"]
  workdir = str(tmp_path / "imported")
  result = jaxlm_cli("from-hf", f"--model={hf_dir}", f"--workdir={workdir}", *data)
  assert result.returncode == 0, result.stderr[-2000:]
  assert not checkpoint.holds_optimizer_state(workdir, 0)
  before = trained.load(workdir, 0).params
  config = from_saved(checkpoint.restore_metadata(workdir, 0)[1])
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 2, 1
  config.eval.every, config.eval.batch_size, config.eval.sample_tokens = 0, 8, 0
  config.checkpoint.every = 2
  train(config, workdir)
  assert checkpoint.holds_optimizer_state(workdir, 2)
  after = trained.load(workdir, 2).params
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  assert moved > 0


def native_run(workdir: str, **model_options) -> ModelConfig:
  """A jaxlm run at step 0 with random weights (norm scales and biases perturbed), char
  tokenizer."""
  config = base_config()
  config.data.tokenizer, config.data.seq_len = "char", 32
  config.model.update({"d_model": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 48,
                       "max_len": 32, **model_options})
  tokenizer = train_tokenizer("char", CORPUS, 0)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  tokens = np.zeros((1, 8), np.int32)
  params = nn.unbox(GPT(model_cfg).init(jax.random.key(0), tokens, tokens, tokens + 1)["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32),
                        params)
  convert.write_run(workdir, config, tokenizer, params)
  return model_cfg


def test_untied_head_and_other_norm_eps_export_exactly(tmp_path):
  """GPT-2's config expresses these two, so they export; transformers' logits equal jaxlm's."""
  workdir, out = str(tmp_path / "native"), str(tmp_path / "hf")
  native_run(workdir, tie_embeddings=False, norm_eps=1e-3)
  assert not convert.to_hf(workdir, out)["tokenizer"]
  run = trained.load(workdir)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  assert reloaded.config.layer_norm_epsilon == 1e-3 and not reloaded.config.tie_word_embeddings
  ids, positions, segments = left_pad([[1, 2, 3, 4, 5] * 6, [7, 8, 9]])
  assert_same_logits(jaxlm_logits(run.params, run.model_cfg, ids, positions, segments),
                     hf_logits(reloaded, ids, positions, segments), segments)


def test_export_refuses_what_gpt2_cannot_express_in_one_line(tmp_path):
  workdir = str(tmp_path / "rope")
  native_run(workdir, positions="rope", mlp="swiglu", use_bias=False)
  result = jaxlm_cli("to-hf", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}")
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("error: GPT-2 cannot express this model")
  for option in ("model.positions='rope'", "model.mlp='swiglu'", "model.use_bias=False"):
    assert option in line
  assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "hf" / "config.json")


def test_hub_style_names_and_buffers_import_the_same(hf_dir):
  """The hub's gpt2 file was saved from GPT2Model: no "transformer." prefix, causal-mask buffers."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_settings = json.load(f)
  model_cfg = ModelConfig(vocab_size=hf_settings["vocab_size"], **hf_gpt2.model_fields(hf_settings))
  tensors = convert.read_hf_weights(hf_dir)
  hub = {name.removeprefix("transformer."): value for name, value in tensors.items()}
  hub.update({f"h.{i}.attn.bias": np.ones((1, 1, CONTEXT, CONTEXT), np.float32) for i in range(2)})
  hub["lm_head.weight"] = hub["wte.weight"]
  expected, got = hf_gpt2.params_from_hf(tensors, model_cfg), hf_gpt2.params_from_hf(hub, model_cfg)
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  # And back: the exported state dict is transformers' own (tied head left out, as it saves it).
  exported = hf_gpt2.params_to_hf(got, model_cfg)
  assert sorted(exported) == sorted(tensors)
  for name, value in exported.items():
    np.testing.assert_array_equal(value, tensors[name], err_msg=name)


def test_import_refuses_non_gpt2_models_and_pickled_weights(hf_dir, tmp_path):
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_settings = json.load(f)
  with pytest.raises(UserError, match="activation_function='relu'"):
    hf_gpt2.model_fields({**hf_settings, "activation_function": "relu"})
  with pytest.raises(UserError, match="config.json, so drop these overrides: model.d_model$"):
    convert.imported_config(base_config(), {"model.d_model", "model.dropout"},
                            hf_gpt2.model_fields(hf_settings), None)
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  (pickled / "config.json").write_text(json.dumps(hf_settings))
  (pickled / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(UserError, match="safetensors only"):
    convert.read_hf_weights(str(pickled))
  tensors = convert.read_hf_weights(hf_dir)
  model_cfg = ModelConfig(vocab_size=hf_settings["vocab_size"], **hf_gpt2.model_fields(hf_settings))
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(UserError, match=r"transformer.h.1.mlp.c_fc.bias missing"):
    hf_gpt2.params_from_hf(tensors, model_cfg)


def test_half_precision_weights_read_as_float32(hf_dir, tmp_path):
  """bfloat16 and float16 safetensors (as the hub's Llamas come) are read as float32, exactly."""
  import safetensors.torch
  tensors = convert.read_hf_weights(hf_dir)
  for dtype in (torch.bfloat16, torch.float16):
    half = {name: torch.from_numpy(value).to(dtype) for name, value in tensors.items()}
    directory = tmp_path / str(dtype).removeprefix("torch.")
    directory.mkdir()
    safetensors.torch.save_file(half, str(directory / "model.safetensors"))
    read = convert.read_hf_weights(str(directory))
    for name, value in half.items():
      assert read[name].dtype == np.float32
      np.testing.assert_array_equal(read[name], value.float().numpy(), err_msg=name)
