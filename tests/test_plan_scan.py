"""The plan of a scanned, rematerialised LoRA step holds one layer's working set, not a float32
copy of every layer's bfloat16 base (what XLA:CPU's hoisted convert of the stack used to add)."""

from test_plan import tiny_config

from jaxlm.parallel.memory import memory_plan

D_MODEL, MLP_DIM, SEQ_LEN = 128, 384, 64


def scanned_lora_config(num_layers: int):
  """A Llama-shaped model (SwiGLU, RMSNorm, rope, no biases), bf16 compute, one sequence per
  device, scanned layers with full remat, rank-4 adapters on a bfloat16 base."""
  c = tiny_config(8, 1, batch_size=8)
  c.data.seq_len = c.model.max_len = SEQ_LEN
  c.model.d_model, c.model.mlp_dim, c.model.num_heads = D_MODEL, MLP_DIM, 4
  c.model.num_layers = num_layers
  c.model.positions, c.model.norm, c.model.mlp, c.model.dtype = "rope", "rmsnorm", "swiglu", "bfloat16"
  c.model.scan_layers, c.model.remat = True, "full"
  c.train.lora.rank, c.train.lora.base_dtype = 4, "bfloat16"
  return c


def test_scanned_remat_lora_temporaries_grow_by_a_residual_per_layer_not_by_its_weights():
  shallow, deep = memory_plan(scanned_lora_config(2)), memory_plan(scanned_lora_config(6))
  per_layer = (deep["temp_bytes"] - shallow["temp_bytes"]) / 4
  # By hand, per layer: qkv + out (4 d^2) and SwiGLU's wi + wo (3 d mlp) in the base.
  base_bf16 = 2 * (4 * D_MODEL**2 + 3 * D_MODEL * MLP_DIM)  # 425,984 B
  assert deep["params_bytes"] - shallow["params_bytes"] >= 4 * base_bf16
  # What remat must keep per layer: its input, [1, seq, d_model], in float32 at most (32 KiB);
  # with the adapters' gradients and a little slack. A float32 copy of the base would be 2x.
  residual_f32 = 4 * SEQ_LEN * D_MODEL
  assert per_layer < base_bf16 / 4, (per_layer, base_bf16)
  assert per_layer >= residual_f32 / 2  # the saved inputs are there (bf16 at least)
