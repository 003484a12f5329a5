"""Full finetune of an imported Llama-family model (Llama 3.x, Qwen2.5, SmolLM2, ...) on your
prompt/completion records, on an accelerator.

    python -m jaxlm.convert from-hf --model=HF_DIR --workdir=runs/base
    python -m jaxlm.train --config=configs/finetune_llama.py --config.init_from=runs/base \
        --config.data.path=train.jsonl --config.data.val_path=val.jsonl --workdir=runs/ft
    python -m jaxlm.convert to-hf --workdir=runs/ft --out=ft_hf

Every parameter trains, with AdamW state (8 bytes per parameter) sharded over all devices (fsdp);
`python -m jaxlm.plan` says whether it fits. configs/finetune_llama_lora.py trains adapters only.
The architecture and tokenizer come from init_from; the runtime model options set here (bfloat16,
full remat, scanned layers) override the import's. The import is unscanned (Hugging Face's
layout); its layers are stacked as they are restored, so they compile as one scanned layer, and
the checkpoints hold them stacked (to-hf unstacks them again).
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.init_from = ""  # the imported run, on the command line
  c.data.source = "files"
  c.data.path = ""  # JSONL records {"prompt": ..., "completion": ...}
  c.data.format = "prompt_completion"
  c.data.truncate = "left"
  c.data.seq_len = 2048
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.model.scan_layers = True  # one compiled layer; see docs/benchmarks.md for the memory plan
  c.train.batch_size = 32
  c.train.grad_accum_steps = 4
  c.train.steps = 1000
  c.train.lr = 2e-5
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.0
  c.train.log_every = 10
  c.eval.every = 200
  c.eval.batch_size = 32
  c.eval.max_batches = 20
  c.eval.sample_tokens = 0
  c.checkpoint.every = 200
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
