"""Peak host memory of `convert from-hf` on a ~1 GB random Llama in sharded safetensors.

    python tools/import_memory.py [--dir=/tmp/llama_1gb] [--shard=200MB]

Makes (once) a random LlamaForCausalLM of about 245M float32 parameters (~1 GB) with transformers,
saved in shards, then runs in fresh processes: (a) `python -m jaxlm.convert from-hf` (tensors
streamed onto the mesh one at a time), (b) the same import with every tensor read first
(hf_files.read_hf_weights, the GPT-2/BERT path), and (c) a process that only starts JAX, as the
baseline. Prints each one's peak RSS (getrusage of the child). On a CPU the "device" arrays live in
host memory too, so (a) holds the model once; (b) holds it twice. On Linux, (d) one more streamed
import reports its RSS at its start and once the parameters are placed, and its peaks while
placing them and while writing the checkpoint (checkpoint.write_once), in MB.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
             max_position_embeddings=2048, tie_word_embeddings=False)


def make_model(directory: str, shard: str) -> None:
  import tokenizers
  import torch
  import transformers
  if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
    return
  os.makedirs(directory, exist_ok=True)
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(["def f(x):\n  return x\n"] * 10, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False))
  tok.save(os.path.join(directory, "tokenizer.json"))
  torch.manual_seed(0)
  config = transformers.LlamaConfig(eos_token_id=tok.token_to_id("<|endoftext|>"), **SHAPE)
  transformers.LlamaForCausalLM(config).save_pretrained(directory, max_shard_size=shard)


MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def peak_rss(code: list[str]) -> tuple[int, float]:
  """(peak RSS in bytes, seconds) of a command, measured by a wrapper process of its own (the
  children's maximum of getrusage covers that one command only)."""
  import time
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", MEASURE, *code], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True).stdout
  return int(out.strip().splitlines()[-1]), time.perf_counter() - start


WHOLE = """
import sys
from jaxlm import convert
from jaxlm.config import base_config
from jaxlm.interop import hf_files
convert.LazyTensors = lambda d: hf_files.read_hf_weights(d)  # every tensor read first
convert.from_hf(sys.argv[1], sys.argv[2], base_config())
"""


PHASES = """
import json, sys
from jaxlm import convert
from jaxlm.config import base_config
from jaxlm.training import checkpoint

def status():  # MB of this process: (RSS now, peak RSS since exec or since the last reset)
  with open("/proc/self/status") as f:
    kib = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith("Vm")}
  return kib["VmRSS"] / 1e3, kib["VmHWM"] / 1e3

phases, write_once = {}, checkpoint.write_once
def traced(*args, **kwargs):  # the parameters are on the devices: now the checkpoint is written
  phases["placed_rss_mb"], phases["placing_peak_mb"] = status()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak starts again from the RSS now
  write_once(*args, **kwargs)
  phases["writing_peak_mb"] = status()[1]
checkpoint.write_once = traced
phases["start_rss_mb"] = status()[0]  # jaxlm and its libraries imported, JAX not started
convert.from_hf(sys.argv[1], sys.argv[2], base_config())
print(json.dumps(phases))
"""


def phases(model_dir: str) -> dict:
  """The streamed import's peak RSS while placing the parameters and while writing them (Linux)."""
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  with tempfile.TemporaryDirectory() as tmp:
    out = subprocess.run([sys.executable, "-c", PHASES, model_dir, f"{tmp}/phases"], cwd=REPO,
                         env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dir", default="/tmp/llama_1gb")
  parser.add_argument("--shard", default="200MB")
  args = parser.parse_args()
  make_model(args.dir, args.shard)
  shards = [f for f in os.listdir(args.dir) if f.endswith(".safetensors")]
  sizes = [os.path.getsize(os.path.join(args.dir, f)) for f in shards]
  results = {"model_bytes": sum(sizes), "shards": len(shards), "largest_shard_bytes": max(sizes)}
  results["baseline_rss"], _ = peak_rss([sys.executable, "-c", "import jax; jax.devices()"])
  with tempfile.TemporaryDirectory() as tmp:
    results["streamed_rss"], results["streamed_seconds"] = peak_rss(
        [sys.executable, "-m", "jaxlm.convert", "from-hf", f"--model={args.dir}",
         f"--workdir={tmp}/streamed"])
  with tempfile.TemporaryDirectory() as tmp:
    results["whole_rss"], results["whole_seconds"] = peak_rss(
        [sys.executable, "-c", WHOLE, args.dir, f"{tmp}/whole"])
  if sys.platform == "linux":
    results.update(phases(args.dir))
  print(json.dumps(results))


if __name__ == "__main__":
  main()
