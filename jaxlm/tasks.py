"""The built-in finetuning task, derived from the built-in corpus (no download).

`pyfunc_names`: given a Python function from the standard library with its name masked as `___`
everywhere, produce the name. Functions from the pretraining corpus's training files make the task's
train split; those from its validation files, which pretraining never saw, are split by a hash of
their text into the task's validation and test splits. Dunder methods are left out (too easy).
"""

import ast
import functools
import re
import sysconfig
import textwrap

from jaxlm.data.errors import DataError
from jaxlm.data.records import Record
from jaxlm.data.splits import split_by_hash, stable_hash
from jaxlm.data.stdlib_source import read_if_utf8, stdlib_files

TASKS = ("pyfunc_names",)
# Completions are single identifiers, so BLEU is scored over characters (see task_eval.py).
TASK_BLEU_TOKENIZE = {"pyfunc_names": "char"}
SPLITS = ("train", "val", "test")
MASK = "___"
PROMPT_SUFFIX = "\n# name of ___: "
MAX_LINES, MAX_CHARS = 8, 320
EVAL_EXAMPLES = 256  # validation and test are capped so evaluation stays quick


def _function_records(source: str) -> list[Record]:
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  lines = source.split("\n")
  records = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    name = node.name
    if len(name) < 3 or (name.startswith("__") and name.endswith("__")):
      continue
    # The def line and the lines after it (decorators are left out), dedented.
    first = node.lineno - 1
    snippet = textwrap.dedent("\n".join(lines[first:min(node.end_lineno, first + MAX_LINES)]))
    body = re.sub(rf"\b{re.escape(name)}\b", MASK, snippet)[:MAX_CHARS]
    records.append(Record(prompt=body + PROMPT_SUFFIX, completion=name))
  return records


@functools.lru_cache(maxsize=2)
def _records_of(held_out: bool, val_fraction: float) -> tuple[Record, ...]:
  """Records of the corpus's training files, or of its held-out (validation) files."""
  root = sysconfig.get_paths()["stdlib"]
  paths = stdlib_files(root)
  train_idx, val_idx = split_by_hash(paths, val_fraction)
  records = []
  for i in val_idx if held_out else train_idx:
    text = read_if_utf8(f"{root}/{paths[i]}")
    if text is not None:
      records.extend(_function_records(text))
  return tuple(records)


def pyfunc_names(split: str, val_fraction: float = 0.1) -> list[Record]:
  """One split of the task; `val_fraction` must match the pretraining corpus's (default 0.1)."""
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; one of {SPLITS}")
  if split == "train":
    return list(_records_of(False, val_fraction))
  # Validation and test: halves of the held-out functions, by a hash of the record.
  held_out = [r for r in _records_of(True, val_fraction)
              if (int(stable_hash(r.prompt + r.completion), 16) % 2 == 0) == (split == "val")]
  return held_out[:EVAL_EXAMPLES]


def load_task(name: str, split: str) -> list[Record]:
  if name != "pyfunc_names":
    raise DataError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
  return pyfunc_names(split)
