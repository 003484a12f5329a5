"""Chat templates (Jinja, as Hugging Face tokenizers store them) and chat records for finetuning.

A template renders `messages` (dicts with `role` and `content`) to text; `add_generation_prompt`
appends what opens the assistant's reply. `{{ eos_token }}` in a template stands for the EOS id
(it has no text in jaxlm's tokenizers): the text is split there and EOS ids put in between, so a
model trained on rendered chats ends its replies with EOS and generation stops there.
Templates run as Hugging Face runs them (trim_blocks, lstrip_blocks), in Jinja's immutable
sandbox: a template from a checkpoint cannot reach Python.

A chat record `{"messages": [...]}` becomes tokens with the loss on the assistant turns only: each
assistant turn is the text that rendering it adds after the generation prompt of the turns
before it, exactly what the model must produce when served.
"""

import functools
import secrets
from collections.abc import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import UserError

# Runs without a template of their own get this one: "role: content" lines, the assistant's
# reply closed by EOS instead of a newline.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
ROLES = ("system", "developer", "user", "assistant")
# Stands for EOS in rendered text; random per process, so message content cannot forge it.
_EOS_MARK = f"\x00eos-{secrets.token_hex(8)}\x00"


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
  try:
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
  except jinja2.TemplateError as e:
    raise UserError(f"the chat template does not compile: {e}; fix data.chat_template") from None


def render(template: str, messages: Sequence[dict], add_generation_prompt: bool) -> str:
  """The template's text, with `_EOS_MARK` where EOS goes."""
  try:
    return _compile(template).render(messages=list(messages), eos_token=_EOS_MARK,
                                     bos_token="", add_generation_prompt=add_generation_prompt)
  except jinja2.TemplateError as e:
    raise UserError(f"the chat template failed to render: {e}; fix the template") from None


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
  """Token ids of rendered text: each `_EOS_MARK` becomes the EOS id."""
  ids: list[int] = []
  for i, piece in enumerate(text.split(_EOS_MARK)):
    if i:
      ids.append(tokenizer.eos_id)
    if piece:
      ids.extend(tokenizer.encode(piece))
  return ids


def encode_prompt(tokenizer: Tokenizer, template: str, messages: Sequence[dict]) -> list[int]:
  """`[EOS] + ` the conversation and the assistant's generation prompt: what a server feeds."""
  return [tokenizer.eos_id, *encode_text(tokenizer, render(template, messages, True))]


def encode_chat(tokenizer: Tokenizer, template: str,
                messages: Sequence[dict]) -> tuple[list[int], list[bool]]:
  """`[EOS] + ` the rendered conversation, and which tokens are assistant turns (the targets)."""
  ids, targets = [tokenizer.eos_id], [False]
  done = ""  # text rendered so far
  for k, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    prompt = render(template, messages[:k], True)
    full = render(template, messages[:k + 1], False)
    if not (prompt.startswith(done) and full.startswith(prompt)):
      raise UserError("the chat template does not render a conversation as the generation "
                      "prompt followed by the reply; use a template whose turns only append")
    for text, is_target in ((prompt[len(done):], False), (full[len(prompt):], True)):
      piece = encode_text(tokenizer, text)
      ids.extend(piece)
      targets.extend([is_target] * len(piece))
    done = full
  return ids, targets


def check_messages(messages: object, where: str) -> list[dict]:
  """`messages` as a list of {"role", "content"} string dicts, or a UserError naming `where`."""
  ok = isinstance(messages, list) and messages and all(
      isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
      for m in messages)
  if not ok:
    raise UserError(f"{where}: 'messages' must be a non-empty list of {{\"role\": one of "
                    f"{', '.join(ROLES)}, \"content\": a string}}; fix the record")
  if not any(m["role"] == "assistant" for m in messages):
    raise UserError(f"{where}: a chat record needs an assistant turn to learn from; add one or "
                    "drop the record")
  return [{"role": m["role"], "content": m["content"]} for m in messages]
