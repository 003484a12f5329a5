"""`model.scan_layers` is a runtime option: a checkpoint in one layer layout (`block_0` ...
`block_{L-1}`, or one stacked `blocks`) is restored into a model of the other, by evaluate, a
finetune's init_from, a LoRA run's base, merge-lora and to-hf; an imported (unscanned) Llama is
LoRA-finetuned with scanned layers and exported to PEFT with transformers' logits; resume of such
a run is bit-identical. References: `stack_layers` on the host, transformers + PEFT."""

import dataclasses
import importlib.util
import os
import shutil

import jax
import numpy as np
import pytest
from test_train import read_metrics, tiny_config, write_corpus

from jaxlm import convert, evaluate
from jaxlm.config import base_config
from jaxlm.eval.scoring import evaluate_split
from jaxlm.inference import trained
from jaxlm.models import GPT, stack_layers
from jaxlm.training import checkpoint, finetune
from jaxlm.training.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_tree(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
  """A tiny GPT trained unscanned (the default)."""
  root = tmp_path_factory.mktemp("gpt")
  config = tiny_config(write_corpus(root / "corpus"), steps=4)
  config.eval.every, config.eval.sample_tokens, config.checkpoint.every = 0, 0, 4
  train(config, str(root / "run"))
  return root


def test_an_unscanned_run_evaluates_scanned_with_the_same_logits_and_metrics(gpt_run, capsys):
  workdir = str(gpt_run / "run")
  plain = trained.load(workdir)
  scanned = trained.load(workdir, overrides={"model.scan_layers": True})
  assert "restored block_0..block_1 as scanned blocks" in capsys.readouterr().err
  assert scanned.model_cfg.scan_layers and "block_0" not in scanned.params
  # The conversion moves values exactly, onto the run's shardings.
  same_tree(scanned.params, stack_layers(jax.device_get(plain.params), 2))
  kernel = scanned.params["blocks"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding == scanned.engine.state_shardings.params["blocks"]["mlp"]["wi"]["kernel"]
  tokens = np.random.default_rng(0).integers(0, plain.model_cfg.vocab_size, (2, 32))
  batch = (tokens, np.tile(np.arange(32), (2, 1)), np.ones((2, 32), np.int32))
  ours = GPT(scanned.model_cfg).apply({"params": jax.device_get(scanned.params)}, *batch)
  theirs = GPT(plain.model_cfg).apply({"params": jax.device_get(plain.params)}, *batch)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(np.abs(theirs).max()))
  scanned_metrics = evaluate.evaluate(workdir, None, {"model.scan_layers": True})
  plain_metrics = evaluate.evaluate(workdir, None, {})
  assert scanned_metrics["tokens"] == plain_metrics["tokens"]
  assert scanned_metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-5)


def test_a_finetune_config_may_scan_the_layers_of_an_unscanned_run(gpt_run):
  """The init_from handoff converts; lr 0 keeps the restored parameters as they are."""
  config = tiny_config(str(gpt_run / "corpus"), steps=2)
  config.init_from, config.model.scan_layers, config.train.lr = str(gpt_run / "run"), True, 0.0
  config.eval.every, config.eval.sample_tokens, config.checkpoint.every = 0, 0, 2
  train(config, str(gpt_run / "scanned_ft"))
  assert all(path[0] != "block_0" for path in checkpoint.param_paths(str(gpt_run / "scanned_ft"), 2))
  finetuned = trained.load(str(gpt_run / "scanned_ft"))
  assert finetuned.config.model.scan_layers
  same_tree(finetuned.params, stack_layers(jax.device_get(trained.load(str(gpt_run / "run")).params),
                                           2))


def test_finetune_configs_set_runtime_model_options_over_the_pretrained_run():
  spec = importlib.util.spec_from_file_location(
      "finetune_llama_lora", os.path.join(REPO, "configs", "finetune_llama_lora.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  pretrained = base_config().to_dict()  # as an import writes it: float32, no remat, unscanned
  config, notes = finetune.inherit(module.get_config(), pretrained, {})
  assert (config.model.scan_layers, config.model.dtype, config.model.remat) == (
      True, "bfloat16", "full")
  assert "model.scan_layers: False in the pretrained run -> True here" in notes
  # An option the config leaves at its default still comes from the pretrained run.
  pretrained["model"]["attention_impl"] = "xla"
  assert finetune.inherit(module.get_config(), pretrained, {})[0].model.attention_impl == "xla"


def test_encoder_and_decoder_stacks_convert_on_the_devices_with_the_run_shardings():
  from test_encdec import make_cfg, stacked

  from jaxlm.parallel import sharding
  from jaxlm.training import scan_layout
  from jaxlm.training.engine import build_engine
  from jaxlm.training.optim import OptimConfig
  cfg = make_cfg("t5")
  mesh, rules = sharding.make_mesh(2, 2, 2), base_config().mesh.rules
  engines = {scan: build_engine(dataclasses.replace(cfg, scan_layers=scan), OptimConfig(), mesh,
                                rules, 0, 16) for scan in (False, True)}
  params = engines[False].init().params
  targets = {scan: engine.abstract_state.params for scan, engine in engines.items()}
  assert jax.tree.map(lambda x: (x.shape, x.sharding), scan_layout.abstract_in(
      targets[False], True)) == jax.tree.map(lambda x: (x.shape, x.sharding), targets[True])
  converted = scan_layout.convert(params, targets[True])
  same_tree(converted, stacked(jax.device_get(params), cfg))
  assert jax.tree.map(lambda x: x.sharding, converted) == engines[True].state_shardings.params
  same_tree(scan_layout.convert(converted, targets[False]), params)


# --- An imported tiny Llama, LoRA-finetuned with scanned layers ---------------------------------

def lora_config(imported: str, corpus) -> object:
  config = base_config()
  config.init_from = imported
  config.data.source, config.data.path, config.data.seq_len = "files", str(corpus), 32
  config.data.val_fraction = 0.25
  config.model.scan_layers = True  # as configs/finetune_llama_lora.py sets it
  config.train.batch_size, config.train.steps, config.train.warmup_steps = 8, 4, 1
  config.train.lr = 1e-2
  config.train.lora.update(rank=4, alpha=8.0)
  config.train.log_every, config.eval.every, config.eval.batch_size = 1, 0, 8
  config.eval.sample_tokens, config.checkpoint.every = 0, 2
  return config


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """(root, HF directory, imported workdir, scanned LoRA workdir)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from test_hf_gpt2 import CORPUS
  from test_hf_llama import CONFIGS, MODELS, write_tokenizer
  root = tmp_path_factory.mktemp("llama")
  hf_dir = str(root / "hf")
  os.makedirs(hf_dir)
  vocab, eos = write_tokenizer(hf_dir)
  torch.manual_seed(0)
  model = getattr(transformers, MODELS["llama"])(CONFIGS["llama"](vocab, eos))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(hf_dir, safe_serialization=True)
  imported = str(root / "imported")
  convert.from_hf(hf_dir, imported, base_config())
  corpus = root / "corpus"
  corpus.mkdir()
  for k in range(4):
    (corpus / f"doc{k}.txt").write_text("".join(CORPUS[k::4]))
  train(lora_config(imported, corpus), str(root / "lora"))
  return root, hf_dir, imported, str(root / "lora")


def test_scanned_lora_over_an_imported_llama_exports_peft_adapters_with_its_logits(llama):
  torch = pytest.importorskip("torch")  # noqa: F841  (transformers needs it)
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from test_hf_gpt2 import hf_logits, jaxlm_logits, token_batch
  root, _, imported, lora_dir = llama
  assert all(path[0] == "blocks" for path in checkpoint.param_paths(lora_dir, 4))
  assert all(path[0] != "blocks" for path in checkpoint.param_paths(imported, 0))
  run = trained.load(lora_dir)
  assert run.model_cfg.scan_layers and "blocks" in run.params
  convert.to_hf(imported, str(root / "base_hf"))
  assert convert.to_hf(lora_dir, str(root / "adapters"), adapters_only=True)["modules"] == 14
  base = transformers.LlamaForCausalLM.from_pretrained(str(root / "base_hf")).eval()
  batch = token_batch(run.model_cfg.vocab_size, seed=2)
  base_logits = hf_logits(base, *batch)
  adapted = peft.PeftModel.from_pretrained(base, str(root / "adapters")).eval()
  theirs, real = hf_logits(adapted, *batch), batch[2] > 0
  ours = jaxlm_logits(run.params, run.model_cfg, *batch)
  np.testing.assert_allclose(ours[real], theirs[real], rtol=0, atol=1e-4)
  assert np.abs(theirs - base_logits)[real].max() > 1e-2  # the adapters did train


def test_merge_lora_of_the_scanned_run_equals_evaluating_its_adapters(llama):
  from test_lora import trained_dataset
  root, _, _, lora_dir = llama
  convert.merge_lora(lora_dir, str(root / "merged"))
  adapted, merged = trained.load(lora_dir), trained.load(str(root / "merged"))
  assert merged.model_cfg.scan_layers and "blocks" in merged.params
  dataset = trained_dataset(adapted)
  ours = evaluate_split(adapted.engine, adapted.params, dataset, 8, 0, 1.0)
  theirs = evaluate_split(merged.engine, merged.params, dataset, 8, 0, 1.0)
  assert ours["tokens"] == theirs["tokens"]
  assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
  # Unscanned, the merged run is the same model.
  unscanned = trained.load(str(root / "merged"), overrides={"model.scan_layers": False})
  again = evaluate_split(unscanned.engine, unscanned.params, dataset, 8, 0, 1.0)
  assert again["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_resume_of_the_scanned_lora_run_is_bit_identical(llama, tmp_path):
  root, _, imported, lora_dir = llama
  resumed = tmp_path / "resumed"
  shutil.copytree(lora_dir, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(str(resumed)), "4"))  # killed after 2
  train(lora_config(imported, root / "corpus"), str(resumed))
  assert all(path[0] == "blocks" for path in checkpoint.param_paths(str(resumed), 4))
  same_tree(trained.load(str(resumed)).params, trained.load(lora_dir).params)
  before = [r["loss"] for r in read_metrics(lora_dir) if r["split"] == "train"]
  after = [r["loss"] for r in read_metrics(str(resumed)) if r["split"] == "train"][len(before):]
  assert after == before[2:]


def test_an_import_may_be_written_scanned(llama, tmp_path):
  _, hf_dir, imported, _ = llama
  config = base_config()
  config.model.scan_layers = True
  convert.from_hf(hf_dir, str(tmp_path / "scanned"), config, {"model.scan_layers"})
  assert all(path[0] != "block_0" for path in checkpoint.param_paths(str(tmp_path / "scanned"), 0))
  same_tree(trained.load(str(tmp_path / "scanned")).params,
            stack_layers(jax.device_get(trained.load(imported).params), 2))
