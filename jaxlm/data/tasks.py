"""The built-in finetuning tasks, derived from the built-in corpus (no download).

Each task turns a standard-library function into a prompt/completion record with one exact answer:
  pyfunc_params  the function's def header, then `# parameters: `; the answer lists its parameter
                 names in order (`self, path, *args, mode, **kwargs`), without annotations or
                 defaults. Functions whose only parameter is self or cls are left out.
  pyfunc_call    the function's def header, then `# call with the required arguments: `; the answer
                 is the call that passes just the required ones (`open_file(path, mode)`).
                 Functions without a required argument are left out.
  pyfunc_names   the function's source with its name masked as `___` everywhere; the answer is the
                 name (a harder task: the name must be guessed from the body).

The tasks' validation and test functions come only from the stdlib files reserved for held-out
splits (`stdlib_source.is_task_held_out`), which the built-in corpus never returns, so no
pretraining run saw them whatever its data.val_fraction or data.dedup; a function whose shown lines
all occur in other stdlib files (a copy) is left out too. They are split into validation and test
by a hash of the record. The train split is the functions of all the other files. Dunder methods
are left out.
"""

import ast
import dataclasses
import functools
import re
import textwrap
from collections.abc import Callable

from jaxlm.data.records import Record
from jaxlm.data.splits import stable_hash
from jaxlm.data.stdlib_source import read_stdlib
from jaxlm.data.translation_tasks import (
  LANGUAGES,
  PREFIX,
  as_records,
  is_translation_task,
  load_translation,
)
from jaxlm.errors import UserError

SPLITS = ("train", "val", "test")
MASK = "___"
MAX_LINES, MAX_CHARS = 8, 320
EVAL_EXAMPLES = 256  # validation and test are capped so evaluation stays quick


@dataclasses.dataclass(frozen=True)
class Function:
  """One function of a stdlib file, as the tasks see it."""
  node: ast.FunctionDef | ast.AsyncFunctionDef
  snippet: str  # the def line and the lines after it (decorators left out), dedented, uncut


@dataclasses.dataclass(frozen=True)
class Task:
  # (the text the prompt shows, uncut; completion) of a function, or None when the task skips it.
  make: Callable[[Function], tuple[str, str] | None]
  suffix: str  # what ends every prompt: the question
  bleu_tokenize: str  # sacrebleu tokenization of the completions (see eval/generation.py)
  max_new_tokens: int  # generation budget of `evaluate --task`: room for the longest answers


def _names(function: Function) -> tuple[str, str] | None:
  name = function.node.name
  masked = re.sub(rf"\b{re.escape(name)}\b", MASK, function.snippet)
  return masked, name


def _parameters(args: ast.arguments) -> list[str]:
  """Parameter names in order, `*args` and `**kwargs` marked as Python writes them."""
  names = [a.arg for a in args.posonlyargs + args.args]
  if args.vararg:
    names.append("*" + args.vararg.arg)
  names += [a.arg for a in args.kwonlyargs]
  if args.kwarg:
    names.append("**" + args.kwarg.arg)
  return names


def _header(function: Function) -> str | None:
  """The def header (its lines up to the body), or None when it is longer than MAX_CHARS."""
  header_lines = max(function.node.body[0].lineno - function.node.lineno, 1)
  header = "\n".join(function.snippet.split("\n")[:header_lines])
  return header if len(header) <= MAX_CHARS else None


def _params(function: Function) -> tuple[str, str] | None:
  """Functions with a parameter besides self/cls (a bare `self` is too easy)."""
  names = _parameters(function.node.args)
  header = _header(function)
  if header is None or not [n for n in names if n not in ("self", "cls")]:
    return None
  return header, ", ".join(names)


def _call(function: Function) -> tuple[str, str] | None:
  """The call with the required arguments: positional ones without a default (not self/cls of a
  method), then required keyword-only ones as `name=name`."""
  args = function.node.args
  positional = args.posonlyargs + args.args
  required = [a.arg for a in positional[:len(positional) - len(args.defaults)]]
  if required[:1] in (["self"], ["cls"]):
    required = required[1:]
  required += [f"{a.arg}={a.arg}" for a, default in zip(args.kwonlyargs, args.kw_defaults)
               if default is None]
  header = _header(function)
  if header is None or not required:  # `name()` is too easy
    return None
  return header, f"{function.node.name}({', '.join(required)})"


TASKS = {
    "pyfunc_params": Task(_params, "\n# parameters: ", "13a", 48),
    "pyfunc_call": Task(_call, "\n# call with the required arguments: ", "13a", 48),
    # Completions are single identifiers, so BLEU is scored over characters.
    "pyfunc_names": Task(_names, "\n# name of ___: ", "char", 32),
}


def _functions(source: str) -> list[Function]:
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
    first = node.lineno - 1
    snippet = textwrap.dedent("\n".join(lines[first:min(node.end_lineno, first + MAX_LINES)]))
    functions.append(Function(node, snippet))
  return functions


def _records(task: Task, texts: list[str]) -> list[tuple[Record, list[str]]]:
  """The task's records of the functions in `texts`, each with the source lines it shows."""
  records = []
  for text in texts:
    for function in _functions(text):
      made = task.make(function)
      if made is not None:
        shown, completion = made
        records.append((Record(shown[:MAX_CHARS] + task.suffix, completion),
                        _shown_lines(function.snippet, shown)))
  return records


def _shown_lines(snippet: str, shown: str) -> list[str]:
  """The lines of `snippet` whose line in `shown` lies wholly within the prompt's MAX_CHARS."""
  lines, end = [], 0
  for line, shown_line in zip(snippet.split("\n"), shown.split("\n")):
    end += len(shown_line)
    if end > MAX_CHARS:
      break
    lines.append(line)
    end += 1  # the newline
  return lines


@functools.lru_cache(maxsize=None)
def _train_records(name: str) -> tuple[Record, ...]:
  """Records of every stdlib file not reserved for held-out splits."""
  _, texts = read_stdlib(task_held_out=False)
  return tuple(record for record, _ in _records(TASKS[name], texts))


@functools.lru_cache(maxsize=1)
def _seen_lines() -> frozenset[str]:
  _, other_texts = read_stdlib(task_held_out=False)
  return frozenset(line.strip() for text in other_texts for line in text.split("\n"))


@functools.lru_cache(maxsize=None)
def _held_out_records(name: str) -> tuple[Record, ...]:
  """Records of the reserved files, less those whose shown lines all occur in other files.

  Some code is copied between stdlib files (the codecs' encode/decode methods, distutils' two MSVC
  compilers); pretraining reads the copy, so the reserved file's function is not unseen. A
  function goes when each line it shows whole occurs as a line of another file: every line-by-line
  copy goes, and so do a few functions made only of common lines (`return None`).
  """
  _, texts = read_stdlib(task_held_out=True)
  seen = _seen_lines()
  return tuple(record for record, shown in _records(TASKS[name], texts)
               if not all(line.strip() in seen for line in shown))


def load_task(name: str, split: str) -> list[Record]:
  """One split of a built-in task: the same whatever data.val_fraction pretraining used."""
  if is_translation_task(name):  # as prompt/completion records, for a decoder-only model
    return as_records(name, load_translation(name, split))
  if name not in TASKS:
    raise UserError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}, "
                    f"{', '.join(PREFIX + lang for lang in LANGUAGES)}")
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; one of {SPLITS}")
  if split == "train":
    return list(_train_records(name))
  # Validation and test: halves of the held-out functions, by a hash of the record (so a function
  # that two reserved files share lands on one side).
  held_out = [r for r in _held_out_records(name)
              if (int(stable_hash(r.prompt + r.completion), 16) % 2 == 0) == (split == "val")]
  return held_out[:EVAL_EXAMPLES]
