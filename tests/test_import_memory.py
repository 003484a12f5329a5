"""`convert from-hf` holds the model in host memory once, not twice: a ~90 MB random Llama in 20 MB
shards is imported in a fresh process, whose peak RSS may grow by the model (the parameters on the
CPU "devices", which are host memory) plus one shard over the RSS it had before the import, with
a stated slack for Orbax's and XLA's own allocations. Before the import wrote one array at a time
(checkpoint.write_once), Orbax held a second copy of the model while saving: this test then fails.

tools/import_memory.py measures the same on a ~1 GB model (docs/benchmarks.md).
"""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from conftest import subprocess_env
from test_hf_llama import write_tokenizer

# 8 layers of 11 MB (d_model 512, SwiGLU 1408, 2 of 8 heads for k/v), a 0.6 MB embedding.
SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
SHARD = "20MB"
# Beyond model + shard: Orbax's and tensorstore's threads and buffers, the tokenizer, the engine
# (measured 2026-12-02, 2-core AMD EPYC: the import grows by the model + 45 MB; before
# write_once, by the model + 170 MB).
SLACK = 64 * 2**20

IMPORT = """
import sys
import jax
from jaxlm import convert
from jaxlm.config import base_config

def status(field):  # KiB, this process since exec (getrusage's maximum counts the forking parent)
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

jax.devices()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
  f.write("5")  # VmHWM starts again from the RSS now
convert.from_hf(sys.argv[1], sys.argv[2], base_config())
print(before, status("VmHWM"))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_import_holds_the_model_once(tmp_path):
  model_dir = str(tmp_path / "hf")
  os.makedirs(model_dir)
  vocab, eos = write_tokenizer(model_dir)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=vocab, eos_token_id=eos, **SHAPE)
  transformers.LlamaForCausalLM(config).save_pretrained(model_dir, max_shard_size=SHARD)
  shards = [os.path.getsize(os.path.join(model_dir, name)) for name in os.listdir(model_dir)
            if name.endswith(".safetensors")]
  assert len(shards) > 3
  out = subprocess.run([sys.executable, "-c", IMPORT, model_dir, str(tmp_path / "run")],
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  before, peak = (int(kib) * 1024 for kib in out.stdout.split()[-2:])
  model, largest = sum(shards), max(shards)
  growth = peak - before
  assert growth < model + largest + SLACK, (
      f"the import grew the process by {growth / 2**20:.0f} MiB: more than the model "
      f"({model / 2**20:.0f} MiB) + its largest shard ({largest / 2**20:.0f} MiB) + "
      f"{SLACK / 2**20:.0f} MiB")
