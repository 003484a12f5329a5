"""The AOT memory plan: per-device bytes from shardings agree with the compiled step, and the CLI."""

import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env
from test_cli import TINY, last_json

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.parallel.memory import format_comparison, format_plan, memory_plan, parse_bytes


def tiny_config(data: int, fsdp: int, batch_size: int = 16):
  c = base_config()
  c.data.vocab_size, c.data.seq_len, c.model.max_len = 64, 32, 32
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 64, 2, 2, 128
  c.model.use_bias = False  # so that nearly every parameter has an axis fsdp can split
  c.train.batch_size = batch_size
  c.mesh.data, c.mesh.fsdp = data, fsdp
  return c


def bert_config(data: int, fsdp: int):
  """A BERT (token types, MLM head) of the same size: its batches' token types are arguments."""
  c = tiny_config(data, fsdp)
  c.model.family, c.model.norm_position, c.model.type_vocab_size = "bert", "post", 2
  c.model.use_bias = True
  return c


@pytest.fixture(scope="module")
def plans():
  return {"data": memory_plan(tiny_config(8, 1)), "fsdp": memory_plan(tiny_config(1, 8)),
          "fsdp_big_batch": memory_plan(tiny_config(1, 8, batch_size=64)),
          "bert_fsdp": memory_plan(bert_config(2, 4))}


def test_state_bytes_from_shardings_are_what_the_compiled_step_takes(plans):
  for plan in plans.values():
    assert plan["devices"] == 8
    # The executable's arguments are exactly the state and batch shards counted from shardings.
    assert plan["argument_bytes"] == plan["params_bytes"] + plan["opt_state_bytes"] + plan["batch_bytes"]
    assert plan["peak_bytes"] >= plan["argument_bytes"] + plan["temp_bytes"]


def test_fsdp_plans_an_eighth_of_the_state_per_device(plans):
  data, fsdp = plans["data"], plans["fsdp"]
  assert data["params_bytes"] == data["num_params"] * 4  # float32, replicated
  assert data["params_bytes"] / 8 <= fsdp["params_bytes"] < 1.05 * data["params_bytes"] / 8
  assert data["opt_state_bytes"] / 8 <= fsdp["opt_state_bytes"] < 1.05 * data["opt_state_bytes"] / 8


def test_activations_grow_with_the_micro_batch(plans):
  assert plans["fsdp"]["sequences_per_batch_shard"] == 2
  assert plans["fsdp_big_batch"]["sequences_per_batch_shard"] == 8
  assert plans["fsdp_big_batch"]["temp_bytes"] > 2 * plans["fsdp"]["temp_bytes"]


def test_fits_compares_the_peak_with_the_device_memory(plans):
  peak = plans["fsdp"]["peak_bytes"]
  assert memory_plan(tiny_config(1, 8), device_memory=peak)["fits"] is True
  tight = memory_plan(tiny_config(1, 8), device_memory=peak - 1)
  assert tight["fits"] is False and "does NOT fit" in format_plan(tight)


def test_device_memory_sizes():
  assert parse_bytes("80GB") == 80 * 10**9
  assert parse_bytes("16GiB") == 16 * 2**30
  assert parse_bytes("1.5 gb") == 1_500_000_000
  assert parse_bytes("4096") == 4096
  for bad in ("eighty", "80XB", "-1GB"):
    with pytest.raises(UserError, match="is not a size"):
      parse_bytes(bad)


def plan_cli(tmp_path, *args):
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=""))
  # The plan simulates its devices itself: the environment gives this process only one.
  return subprocess.run([sys.executable, "-m", "jaxlm.plan", f"--config={config}", *args], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300,
                        check=False)


def test_plan_cli_prints_a_per_device_table_for_simulated_devices(tmp_path):
  result = plan_cli(tmp_path, "--devices=8", "--device_memory=1GB", "--config.mesh.fsdp=8",
                    "--config.mesh.data=1")
  assert result.returncode == 0, result.stderr[-2000:]
  for row in ("parameters", "optimizer state", "activations + temporaries", "peak", "fits in"):
    assert row in result.stdout
  plan = last_json(result.stdout)
  assert plan["devices"] == 8 and plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert plan["fits"] is True


def test_plan_cli_bad_sizes_are_one_line_errors(tmp_path):
  result = plan_cli(tmp_path, "--devices=8", "--device_memory=lots")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: --device_memory='lots' is not a size; write e.g. 80GB, 16GiB or 512MB"]


def test_lora_plan_trains_and_stores_optimizer_state_for_the_adapters_only():
  full_config = tiny_config(1, 8)
  config = tiny_config(1, 8)
  config.train.lora.rank, config.train.lora.base_dtype = 4, "bfloat16"
  full, adapted = memory_plan(full_config), memory_plan(config)
  # Adapters of rank 4 on qkv [64 -> 3x64], out, wi [64 -> 128], wo, in each of 2 layers.
  adapters = 2 * 4 * ((64 + 192) + (64 + 64) + (64 + 128) + (128 + 64))
  assert adapted["trainable_params"] == adapters and full["trainable_params"] == full["num_params"]
  assert adapted["num_params"] == full["num_params"] + adapters
  # Adam's two float32 moments of the adapters only: at most unsharded, plus a few scalars.
  assert adapted["opt_state_bytes"] <= 2 * 4 * adapters + 64
  assert full["opt_state_bytes"] > 2 * 4 * full["num_params"] / 8 * 0.95
  # The base in bfloat16: half the full finetune's float32 parameters, next to the adapters.
  assert adapted["params_bytes"] - adapted["grads_bytes"] == full["params_bytes"] // 2
  assert "full finetune vs LoRA" in format_comparison(full, adapted)
