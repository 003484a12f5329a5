"""Finetune a pretrained run as a chat model; by default on the built-in task as chats.

    python -m jaxlm.train --config=configs/finetune_chat.py --config.init_from=runs/default \
        --workdir=runs/chat
    python -m jaxlm.serve --workdir=runs/chat      # /v1/chat/completions answers in the template

Each example of the built-in task `pyfunc_params` becomes a user turn (the def header and the
question) and the assistant's reply (the parameter names), rendered with data.chat_template (""
= the plain default: "user: ...\\nassistant: ...", each reply closed by EOS); the loss covers the
replies only. For your own data, give JSONL records {"messages": [{"role", "content"}, ...]}:
    --config.data.source=files --config.data.path=chats.jsonl [--config.data.val_path=...]
The template is saved with the tokenizer in the checkpoint, and `serve` renders requests with it.
"""

import importlib.util
import os

# The prompt/completion finetune's settings, read from the file beside this one.
_spec = importlib.util.spec_from_file_location(
    "finetune_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py"))
finetune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(finetune)


def get_config():
  c = finetune.get_config()
  c.data.path = "pyfunc_params_chat"
  c.data.format = "chat"
  return c
