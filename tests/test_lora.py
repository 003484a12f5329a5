"""LoRA: fresh adapters are the base model exactly, the adapted projection is W + (alpha/r) A B,
the base stays frozen (no gradients, no optimizer state, not in checkpoints), resume is exact,
evaluate loads base + adapters, merge-lora equals the adapters, and a changed base is refused."""

import dataclasses
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import read_metrics, tiny_config, write_corpus

from jaxlm import convert
from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.eval.scoring import evaluate_split
from jaxlm.inference import trained
from jaxlm.models import GPT, Bert, ModelConfig, lora
from jaxlm.training import checkpoint, lora_run
from jaxlm.training.engine import engine_for_config
from jaxlm.training.loop import train

RANK, ALPHA = 4, 8.0


def adapters_cfg(**options):
  return lora.LoraConfig(**{"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": "all",
                            "base_dtype": "float32", **options})


def init(model, seq=8):
  tokens = jnp.zeros((2, seq), jnp.int32)
  return nn.unbox(model.init(jax.random.key(0), tokens, tokens, tokens + 1)["params"])


def inputs(vocab, seq=8):
  tokens = np.random.default_rng(0).integers(0, vocab, (2, seq)).astype(np.int32)
  return tokens, np.tile(np.arange(seq, dtype=np.int32), (2, 1)), np.ones((2, seq), np.int32)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_fresh_adapters_give_exactly_the_base_model(family):
  cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=16,
                    family=family, norm_position="post" if family == "bert" else "pre",
                    type_vocab_size=2 if family == "bert" else 0)
  module = GPT if family == "gpt" else Bert
  adapted = init(module(dataclasses.replace(cfg, lora=adapters_cfg())))
  trainable, frozen = lora.split(adapted)
  paths = {"/".join(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(trainable)}
  assert paths == {f"block_{i}/{m}/lora_{ab}" for i in range(2) for ab in "ab"
                   for m in ("attn/qkv", "attn/out", "mlp/wi", "mlp/wo")}
  a = adapted["block_0"]["attn"]["qkv"]["lora_a"]  # [d_model, rank], uniform in +-1/sqrt(32)
  assert a.shape == (32, RANK) and 0 < float(jnp.abs(a).max()) <= 32 ** -0.5
  assert not any(float(jnp.abs(b).max()) for b in jax.tree.leaves(trainable)[1::2])  # lora_b = 0
  batch = inputs(61)
  base = module(cfg).apply({"params": frozen}, *batch)
  np.testing.assert_array_equal(module(dataclasses.replace(cfg, lora=adapters_cfg())).apply(
      {"params": adapted}, *batch), base)


def test_adapted_projection_is_the_kernel_plus_scaled_low_rank_product():
  cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=1, num_heads=4, mlp_dim=64, max_len=16,
                    num_kv_heads=2, positions="rope", mlp="swiglu")
  adapted_cfg = dataclasses.replace(cfg, lora=adapters_cfg(targets="attention"))
  params = init(GPT(adapted_cfg))
  keys = iter(jax.random.split(jax.random.key(3), 8))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.random.normal(next(keys), x.shape) * 0.1 if p[-1].key == "lora_b" else x,
      params)
  assert set(params["block_0"]["attn"]) == {"q", "kv", "out"} and "lora_a" not in str(
      params["block_0"]["mlp"])
  # The merged kernels by hand: W + alpha / rank * A B, contracting the rank axis.
  merged = lora.split(params)[1]
  for name in ("q", "kv", "out"):
    p = params["block_0"]["attn"][name]
    product = np.tensordot(np.asarray(p["lora_a"]), np.asarray(p["lora_b"]), axes=(-1, 0))
    merged["block_0"]["attn"][name]["kernel"] = p["kernel"] + ALPHA / RANK * product
  batch = inputs(61)
  adapted = GPT(adapted_cfg).apply({"params": params}, *batch)
  expected = GPT(cfg).apply({"params": merged}, *batch)
  np.testing.assert_allclose(adapted, expected, rtol=0, atol=1e-5 * float(jnp.abs(expected).max()))
  assert float(jnp.abs(adapted - GPT(cfg).apply({"params": lora.split(params)[1]}, *batch)).max()
               ) > 1e-2  # the adapters do change the output


def test_base_is_held_in_bfloat16_and_has_no_optimizer_state():
  config = tiny_config("")
  config.train.lora.rank, config.train.lora.base_dtype = RANK, "bfloat16"
  engine = engine_for_config(config, 30)
  state = engine.abstract_state
  trainable, frozen = lora.split(state.params)
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype(jnp.float32)}
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  # Adam's two moments, of the adapters only.
  assert sorted(x.shape for x in moments) == sorted(
      x.shape for x in jax.tree.leaves(trainable) * 2)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  corpus = write_corpus(root / "corpus")
  config = tiny_config(corpus, steps=20)
  config.eval.sample_tokens = 0
  train(config, str(root / "base"))
  return root, corpus


def lora_config(root, corpus, base="base", steps=20):
  config = tiny_config(corpus, steps=steps)
  config.init_from = str(root / base)
  config.train.lora.rank, config.train.lora.alpha, config.train.lr = RANK, ALPHA, 1e-2
  config.eval.sample_tokens, config.checkpoint.every, config.eval.every = 0, 10, 0
  return config


@pytest.fixture(scope="module")
def lora_runs(base_run):
  root, corpus = base_run
  train(lora_config(root, corpus), str(root / "lora"))
  return root, corpus


def test_lora_trains_the_adapters_only_and_checkpoints_hold_only_them(lora_runs):
  root, _ = lora_runs
  base, adapted = trained.load(str(root / "base")), trained.load(str(root / "lora"))
  trainable, frozen = lora.split(adapted.params)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the base did not move
  assert all(float(jnp.abs(b).max()) > 0 for b in jax.tree.leaves(trainable)[1::2])
  saved = checkpoint.param_paths(str(root / "lora"), 20)
  assert saved and all(path[-1] in lora.ADAPTER_NAMES for path in saved)
  losses = [r["loss"] for r in read_metrics(str(root / "lora")) if r["split"] == "train"]
  assert losses[-1] < losses[0]


def test_resume_after_a_lost_checkpoint_is_bit_identical(lora_runs, tmp_path):
  root, corpus = lora_runs
  resumed = tmp_path / "resumed"
  shutil.copytree(root / "lora", resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(str(resumed)), "20"))  # killed after 10
  train(lora_config(root, corpus), str(resumed))
  original, again = trained.load(str(root / "lora")), trained.load(str(resumed))
  for a, b in zip(jax.tree.leaves(original.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  before = [r["loss"] for r in read_metrics(str(root / "lora")) if r["split"] == "train"]
  after = [r["loss"] for r in read_metrics(str(resumed)) if r["split"] == "train"][len(before):]
  assert after == before[1:]


def test_merge_then_evaluate_equals_evaluating_the_adapters(lora_runs):
  root, _ = lora_runs
  result = convert.merge_lora(str(root / "lora"), str(root / "merged"))
  assert result["from_step"] == 20
  adapted, merged = trained.load(str(root / "lora")), trained.load(str(root / "merged"))
  assert not lora.has_adapters(merged.params) and merged.config.train.lora.rank == 0
  dataset = trained_dataset(adapted)
  ours = evaluate_split(adapted.engine, adapted.params, dataset, 16, 0, 1.0)
  theirs = evaluate_split(merged.engine, merged.params, dataset, 16, 0, 1.0)
  assert ours["tokens"] == theirs["tokens"]
  # Merging reassociates (x W + x A B vs x (W + A B)): float32 rounding of a sum over ~1e3 tokens.
  assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
  with pytest.raises(UserError, match="is not a LoRA run"):
    convert.merge_lora(str(root / "merged"), str(root / "merged2"))
  # A LoRA run's checkpoints hold adapters only: a finetune starts from its merge instead.
  config = lora_config(root, "")
  config.init_from, config.train.lora.rank = str(root / "lora"), 0
  with pytest.raises(UserError, match="is a LoRA run .*; merge it first"):
    train(config, str(root / "from_lora"))


def trained_dataset(run):
  from jaxlm.data.dataset import DataConfig, build_dataset, read_corpus
  data_cfg = DataConfig.from_config(run.config.data)
  return build_dataset(data_cfg, read_corpus(data_cfg), run.tokenizer).val


def test_a_base_run_that_is_not_the_recorded_one_is_refused(lora_runs, tmp_path):
  root, corpus = lora_runs
  record = lora_run.read_record(str(root / "lora"), 20)
  assert record["workdir"] == str(root / "base") and record["step"] == 20
  # Resuming onto another base run: a copy of it elsewhere.
  shutil.copytree(root / "base", tmp_path / "base")
  with pytest.raises(UserError, match=r"the adapters in .* were trained on step 20 of .*/base, "
                                      r"not step 20 of .*/base; set --config.init_from="):
    train(lora_config(tmp_path, corpus, steps=30), str(root / "lora"))
  # The recorded base run trained again (another seed): same place and step, other parameters.
  shutil.rmtree(tmp_path / "base" / "checkpoints")
  config = tiny_config(corpus, steps=20)
  config.eval.sample_tokens, config.train.seed = 0, 7
  train(config, str(tmp_path / "base"))
  os.rename(root / "base", tmp_path / "original")
  os.rename(tmp_path / "base", root / "base")
  try:
    with pytest.raises(UserError, match="is not the one the adapters in .* were trained on"):
      trained.load(str(root / "lora"))
  finally:
    os.rename(root / "base", tmp_path / "retrained")
    os.rename(tmp_path / "original", root / "base")


def test_peft_export_loads_onto_the_exported_gpt2_base_with_the_same_logits(lora_runs, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  root, _ = lora_runs
  convert.to_hf(str(root / "base"), str(tmp_path / "base"))
  assert convert.to_hf(str(root / "lora"), str(tmp_path / "adapters"),
                       adapters_only=True)["modules"] == 8  # 2 layers x c_attn, c_proj, c_fc, c_proj
  base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()
  with torch.no_grad():
    ids = np.random.default_rng(5).integers(0, base.config.vocab_size, (2, 32))
    base_logits = base(input_ids=torch.tensor(ids)).logits.numpy()
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapters")).eval()
    theirs = model(input_ids=torch.tensor(ids)).logits.numpy()
  run = trained.load(str(root / "lora"))
  positions, segments = np.tile(np.arange(32), (2, 1)), np.ones((2, 32), np.int32)
  ours = np.asarray(GPT(run.model_cfg).apply({"params": jax.device_get(run.params)}, ids,
                                             positions, segments))
  # Float32 rounding of torch and XLA summing in other orders: 1e-5 of the largest logit.
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
  assert np.abs(theirs - base_logits).max() > 100 * 1e-5 * np.abs(theirs).max()  # adapters count
  # And back: from-hf --peft over the same base run gives the same adapters (GPT-2's modules are
  # jaxlm's kernels one to one, so the rank stays 4), hence the same parameters.
  config = lora_config(root, "")
  config.train.lora.rank = 0
  result = convert.from_peft(str(tmp_path / "adapters"), str(tmp_path / "imported"), config)
  assert result["rank"] == RANK
  again = trained.load(str(tmp_path / "imported"))
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def directory_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_rank_8_checkpoint_of_the_default_model_is_under_a_tenth_of_its_base(tmp_path):
  """configs/default.py's model (2.2M parameters) with rank-8 adapters on every projection: the
  adapters are 98k parameters (4.4%), and Adam's two moments scale both checkpoints alike, so the
  LoRA checkpoint (adapters + their Adam state + metadata) is about 4.4% of the base run's."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("default", "configs/default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sizes, array_bytes = {}, {}
  for rank in (0, 8):
    config = module.get_config()
    config.train.lora.rank = rank
    engine = engine_for_config(config, config.data.vocab_size)
    state = lora_run.saved_state(engine.init())
    mngr = checkpoint.manager(str(tmp_path / f"rank{rank}"))
    checkpoint.save(mngr, 1, state, {}, {}, {})
    mngr.wait_until_finished()
    mngr.close()
    sizes[rank] = directory_bytes(os.path.join(checkpoint.checkpoint_dir(
        str(tmp_path / f"rank{rank}")), "1"))
    # What the checkpoint holds, from its metadata (shapes and dtypes of every saved array).
    saved = checkpoint._state_tree(str(tmp_path / f"rank{rank}"), 1)  # noqa: SLF001
    array_bytes[rank] = sum(int(np.prod(m.shape)) * np.dtype(m.dtype).itemsize
                            for m in jax.tree.leaves(saved) if hasattr(m, "shape"))
    if rank:
      assert lora.has_adapters(state.params) and not lora.split(state.params)[1]
  # Adapters + their two Adam moments against parameters + theirs: 98,304 / 2,197,632 = 4.47%.
  assert array_bytes[8] / array_bytes[0] == pytest.approx(98_304 / 2_197_632, abs=1e-3)
  # On disk (zstd-compressed; Adam's moments start at zero) it was 6.0% here; OCDBT's data-file
  # layout varies with write timing (10.8% seen once on a loaded CI machine), hence the margin.
  assert 0.02 < sizes[8] / sizes[0] < 0.15, sizes


def test_scanned_layers_carry_the_same_adapters():
  from jaxlm.models import stack_layers
  cfg = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=16,
                    lora=adapters_cfg())
  params = init(GPT(cfg))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 if p[-1].key == "lora_b" else x, params)
  batch = inputs(61)
  scanned = dataclasses.replace(cfg, scan_layers=True)
  np.testing.assert_allclose(GPT(scanned).apply({"params": stack_layers(params, 2)}, *batch),
                             GPT(cfg).apply({"params": params}, *batch), rtol=0, atol=1e-5)


def test_peft_adapters_with_features_jaxlm_lacks_are_refused():
  from jaxlm.interop import peft
  with pytest.raises(UserError, match="use_dora=True, bias='all'; only plain LoRA"):
    peft.read_peft_config({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True,
                           "bias": "all"})


@pytest.fixture(scope="module")
def gqa_lora_cfg(tiny_model_cfg):
  return dataclasses.replace(tiny_model_cfg, num_kv_heads=2, positions="rope",
                             lora=adapters_cfg())


@pytest.fixture(scope="module")
def one_device_gqa_lora_run(gqa_lora_cfg):
  """The reference both meshes below are checked against, trained once."""
  from test_step import run_steps

  from jaxlm.parallel import sharding
  return run_steps(gqa_lora_cfg, sharding.make_mesh(1, 1, 1, jax.devices()[:1]))


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8)], ids=["2x2x2", "tensor8"])
def test_sharded_lora_training_with_grouped_query_attention_equals_one_device(
    gqa_lora_cfg, one_device_gqa_lora_run, mesh_shape):
  """Adapters on a GQA model (2 kv heads: split over tensor=2, replicated over tensor=8) train
  alike on a data x fsdp x tensor mesh and on one device."""
  from test_step import run_steps

  from jaxlm.parallel import sharding
  state, losses, norms = run_steps(gqa_lora_cfg, sharding.make_mesh(*mesh_shape))
  ref_state, ref_losses, ref_norms = one_device_gqa_lora_run
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
  trainable, frozen = lora.split(state.params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(lora.split(ref_state.params)[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the base never moves
  assert all(float(jnp.abs(b).max()) > 0 for b in jax.tree.leaves(trainable)[1::2])
