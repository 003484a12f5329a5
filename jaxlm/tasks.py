"""The built-in finetuning task, derived from the built-in corpus (no download).

`pyfunc_names`: given a Python function from the standard library with its name masked as `___`
everywhere, produce the name. The task's validation and test functions come only from the stdlib
files reserved for tasks' held-out splits (`stdlib_source.is_task_held_out`), which the built-in
corpus never returns, so no pretraining run saw them whatever its data.val_fraction or data.dedup;
a function whose shown lines all occur in other stdlib files (a copy) is left out too. They are
split into validation and test by a hash of the record. The train split is the functions of all
the other files. Dunder methods are left out (too easy).
"""

import ast
import functools
import re
import textwrap

from jaxlm.data.records import Record
from jaxlm.data.splits import stable_hash
from jaxlm.data.stdlib_source import read_stdlib
from jaxlm.errors import UserError

TASKS = ("pyfunc_names",)
# Completions are single identifiers, so BLEU is scored over characters (see task_eval.py).
TASK_BLEU_TOKENIZE = {"pyfunc_names": "char"}
SPLITS = ("train", "val", "test")
MASK = "___"
PROMPT_SUFFIX = "\n# name of ___: "
MAX_LINES, MAX_CHARS = 8, 320
EVAL_EXAMPLES = 256  # validation and test are capped so evaluation stays quick


def _functions(source: str) -> list[tuple[Record, list[str]]]:
  """Each function's record and the lines of its source that the prompt shows whole."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  lines = source.split("\n")
  functions = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    name = node.name
    if len(name) < 3 or (name.startswith("__") and name.endswith("__")):
      continue
    # The def line and the lines after it (decorators are left out), dedented.
    first = node.lineno - 1
    snippet = textwrap.dedent("\n".join(lines[first:min(node.end_lineno, first + MAX_LINES)]))
    masked = re.sub(rf"\b{re.escape(name)}\b", MASK, snippet)
    functions.append((Record(prompt=masked[:MAX_CHARS] + PROMPT_SUFFIX, completion=name),
                      _shown_lines(snippet, masked)))
  return functions


def _shown_lines(snippet: str, masked: str) -> list[str]:
  """The lines of `snippet` whose masked line lies wholly within the prompt's MAX_CHARS."""
  shown, end = [], 0
  for line, masked_line in zip(snippet.split("\n"), masked.split("\n")):
    end += len(masked_line)
    if end > MAX_CHARS:
      break
    shown.append(line)
    end += 1  # the newline
  return shown


@functools.lru_cache(maxsize=1)
def _train_records() -> tuple[Record, ...]:
  """Functions of every stdlib file not reserved for held-out splits."""
  _, texts = read_stdlib(task_held_out=False)
  return tuple(record for text in texts for record, _ in _functions(text))


@functools.lru_cache(maxsize=1)
def _held_out_records() -> tuple[Record, ...]:
  """Functions of the reserved files, less those whose shown lines all occur in other files.

  Some code is copied between stdlib files (the codecs' encode/decode methods, distutils' two MSVC
  compilers); pretraining reads the copy, so the reserved file's function is not unseen. A
  function goes when each line it shows whole occurs as a line of another file: every line-by-line
  copy goes, and so do a few functions made only of common lines (`return None`).
  """
  _, other_texts = read_stdlib(task_held_out=False)
  seen_lines = {line.strip() for text in other_texts for line in text.split("\n")}
  _, texts = read_stdlib(task_held_out=True)
  return tuple(record for text in texts for record, shown in _functions(text)
               if not all(line.strip() in seen_lines for line in shown))


def pyfunc_names(split: str) -> list[Record]:
  """One split of the task: the same whatever data.val_fraction pretraining used."""
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; one of {SPLITS}")
  if split == "train":
    return list(_train_records())
  # Validation and test: halves of the held-out functions, by a hash of the record (so a function
  # that two reserved files share lands on one side).
  held_out = [r for r in _held_out_records()
              if (int(stable_hash(r.prompt + r.completion), 16) % 2 == 0) == (split == "val")]
  return held_out[:EVAL_EXAMPLES]


def load_task(name: str, split: str) -> list[Record]:
  if name != "pyfunc_names":
    raise UserError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
  return pyfunc_names(split)
