"""Will a config fit? An ahead-of-time memory plan of the train step for N devices, on this CPU.

    python -m jaxlm.plan --config=configs/llama_7b_class.py --devices=64 [--config.mesh.fsdp=-1 ...]
        [--device_memory=80GB]

The train step is lowered and compiled for N simulated CPU devices from shapes alone
(ShapeDtypeStructs with the run's shardings), so nothing the size of the model is ever allocated.
Per device it prints:
  parameters, optimizer state, batch   exact: shard shapes from the arrays' shardings
  activations + temporaries            XLA's buffer assignment for the compiled step (gradients,
                                       gathered weights, saved activations, logits)
  peak                                 arguments + outputs not aliased to them + temporaries
With train.lora.rank > 0 (LoRA) it plans the full finetune of the same model too and prints
both side by side: parameters, gradients, optimizer state, activations. The temporaries are what
the CPU compiler needs; GPU and TPU compilers schedule collectives and
rematerialise differently, so treat that line as an estimate. The vocabulary size is data.vocab_size
(and data.target_vocab_size for an encdec run's separate target side; no tokenizer is trained). The last line of stdout is the plan as JSON.
"""

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.errors import UserError
from jaxlm.parallel.memory import format_comparison, format_plan, memory_plan, parse_bytes


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "configs/default.py", "Training config file to plan.")
  flags.DEFINE_integer("devices", 8, "Devices to plan for (simulated on this machine's CPU).")
  flags.DEFINE_string("device_memory", "",
                      "Memory of one device, e.g. 80GB, 16GiB (GB = 10^9, GiB = 2^30 bytes); "
                      "'' = do not check.")


def main(argv):
  del argv
  f = flags.FLAGS

  def run():
    if f.devices < 1:
      raise UserError(f"--devices={f.devices} must be at least 1")
    device_memory = parse_bytes(f.device_memory) if f.device_memory else None
    # Simulated CPU devices, set before anything initialises a backend.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", f.devices)
    plan = memory_plan(f.config, device_memory)
    print(format_plan(plan))
    if f.config.train.lora.rank:  # a LoRA run: beside the full finetune of the same model
      full_config = ml_collections.ConfigDict(f.config.to_dict())
      full_config.train.lora.rank = 0
      full = memory_plan(full_config, device_memory)
      print(format_plan(full))
      print(format_comparison(full, plan))
      plan = {**plan, "full_finetune": full}
    cli.emit_json(plan)

  cli.run(run, multihost=False)


if __name__ == "__main__":
  define_flags()
  app.run(main)
