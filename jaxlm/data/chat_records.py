"""Chat finetuning records: JSONL `{"messages": [{"role", "content"}, ...]}` or a built-in task's
records as one user turn and one assistant reply (`data.path=TASK_chat`).

Each record is rendered with the run's chat template (`data.chat_template`, "" = the default of
`chat.py`) and packed whole like prompt/completion records, with the loss on the assistant turns
and the EOS that closes each. A record longer than `data.seq_len + 1` tokens loses its earliest
tokens after the leading EOS (`data.truncate=left`) or is dropped (`drop`).
"""

import dataclasses
import json

from jaxlm.data import chat
from jaxlm.data.clean import normalize_text
from jaxlm.data.file_source import first_jsonl_record, iter_jsonl, resolve_files
from jaxlm.data.records import PackedRecords, pack_pieces
from jaxlm.data.splits import split_by_hash
from jaxlm.data.tasks import load_task
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import UserError

MESSAGES = "messages"
TASK_SUFFIX = "_chat"


@dataclasses.dataclass(frozen=True)
class ChatRecord:
  messages: tuple  # of {"role": str, "content": str}

  @property
  def text(self) -> str:
    return "\n".join(m["content"] for m in self.messages)


def template_of(data_cfg) -> str:
  return data_cfg.chat_template or chat.DEFAULT_TEMPLATE


def is_chat_file(path: str) -> bool:
  """True when data.path names JSONL whose first record has a "messages" field."""
  return MESSAGES in (first_jsonl_record(path) or {})


def split_chat_records(records: list[ChatRecord],
                       val_fraction: float) -> tuple[list[ChatRecord], list[ChatRecord]]:
  """A held-out subset chosen by a hash of each chat (identical chats stay together)."""
  train_idx, val_idx = split_by_hash([json.dumps(r.messages) for r in records], val_fraction)
  return [records[i] for i in train_idx], [records[i] for i in val_idx]


def read_chat_records(path: str) -> list[ChatRecord]:
  files, _ = resolve_files(path)
  records = []
  for file in files:
    for lineno, record in iter_jsonl(file):
      messages = chat.check_messages(record.get(MESSAGES), f"{file}:{lineno}")
      records.append(ChatRecord(tuple({"role": m["role"], "content": normalize_text(m["content"])}
                                      for m in messages)))
  if not records:
    raise UserError(f"{path} holds no chat records")
  return records


def load_chat_task(name: str, split: str) -> list[ChatRecord]:
  """A built-in prompt/completion task as chats: the prompt from the user, the answer replied."""
  task = name.removesuffix(TASK_SUFFIX)
  return [ChatRecord(({"role": "user", "content": r.prompt},
                      {"role": "assistant", "content": r.completion}))
          for r in load_task(task, split)]


def pack_chat_split(records: list[ChatRecord], tokenizer: Tokenizer, template: str, seq_len: int,
                    truncate: str, name: str) -> tuple[PackedRecords, float]:
  """Packed rows of chats and the UTF-8 bytes per scored token (the assistant turns' text)."""
  pieces, truncated, dropped, num_bytes = [], 0, 0, 0
  for record in records:
    ids, targets = chat.encode_chat(tokenizer, template, record.messages)
    overflow = len(ids) - (seq_len + 1)
    if overflow > 0:
      if truncate == "drop":
        dropped += 1
        continue
      ids, targets = ids[:1] + ids[1 + overflow:], targets[:1] + targets[1 + overflow:]
      truncated += 1
    if not any(targets):
      dropped += 1
      continue
    pieces.append((ids, targets))
    num_bytes += len(tokenizer.decode([t for t, g in zip(ids, targets) if g]).encode("utf-8"))
  packed = pack_pieces(pieces, seq_len, truncated, dropped, name)
  return packed, num_bytes / max(float(packed.weights.sum()), 1.0)
