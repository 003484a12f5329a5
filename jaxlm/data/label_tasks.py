"""Built-in labelled tasks for BERT's heads, derived from the built-in corpus (no download).

  docstring_package  classification: the first paragraph of a function's, class's or module's
                     docstring -> the top-level stdlib package its file belongs to (`email`,
                     `tkinter`, ...), over the fixed PACKAGES.
  python_tags        tagging: the tokens of one logical line of Python source (the `tokenize`
                     module's, without comments) tagged KEYWORD (keyword.iskeyword), BUILTIN (a
                     public name of the builtins module, not as an attribute after "."), STRING
                     or NUMBER in BIO; everything else O. A run of adjacent strings (implicit
                     concatenation) is one STRING entity, and the two-word operators `not in`,
                     `is not` and `yield from` one KEYWORD entity, so I- tags occur too.
  python_syntax      classification, like CoLA's acceptability for code: a line of python_tags
                     written as its tokens with one space between is "valid" when it parses by
                     itself (`ast.parse`: simple statements; `if x:` needs a block), and the same
                     line with two adjacent tokens swapped, where that stops it parsing, is
                     "invalid" (the first such swap from a position drawn by a hash of the line).
                     Each line gives one example of each label, spaced alike, so the words and
                     the layout say nothing: the grammar does, which the masked LM learns from
                     the corpus and bag-of-words features cannot see.

As with the prompt/completion tasks (tasks.py), validation and test come only from the stdlib files
reserved for held-out splits (`stdlib_source.is_task_held_out`), which pretraining never reads, and
an example copied from another stdlib file is left out: a docstring paragraph that occurs in one
(whitespace aside), a line whose code is a line of one (whitespace and comments aside). Validation
and test are halves of the rest by a hash of the example, capped so that evaluation stays quick.
Train comes from the other files. Each split is built once per process (functools.cache); the
first load of a task takes a second or two.

PACKAGES are those with docstrings in the reserved files (at least 4 after removing copies) and
at least 10 in the others, on Python 3.11-3.13: the reserved files are 5% of the standard library
(41 files), so packages such as asyncio or logging, none of whose files are reserved, cannot be
evaluated without text that pretraining read.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import io
import keyword
import random
import tokenize
import warnings
from collections.abc import Callable

from jaxlm.data.labelled import ClassificationRecord, LabelledRecord, TaggingRecord
from jaxlm.data.splits import stable_hash
from jaxlm.data.stdlib_source import is_task_held_out, read_stdlib
from jaxlm.errors import UserError

SPLITS = ("train", "val", "test")
EVAL_EXAMPLES = 512  # validation and test are capped so evaluation stays quick

PACKAGES = ("ctypes", "email", "encodings", "idlelib", "importlib", "json", "tkinter", "wsgiref")
MAX_PER_PACKAGE = 250  # train examples per package, drawn with TRAIN_SEED: roughly balanced
TRAIN_SEED = 0
MIN_DOC_CHARS, MAX_DOC_CHARS = 10, 300

ENTITY_TYPES = ("BUILTIN", "KEYWORD", "NUMBER", "STRING")
# Sorted, as label_vocabulary orders the tags of the train split: the same ids either way.
TAGS = tuple(sorted(["O", *(f"{bi}-{entity}" for entity in ENTITY_TYPES for bi in "BI")]))
MIN_WORDS, MAX_WORDS, MAX_WORD_CHARS = 2, 24, 40
LINES_PER_FILE = 40  # lines taken from one file, evenly spread: many files, not a few long ones
TRAIN_LINES = 8000
_KEYWORD_PAIRS = frozenset({("not", "in"), ("is", "not"), ("yield", "from")})
_SKIPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                      tokenize.DEDENT, tokenize.ENDMARKER, tokenize.ENCODING})


@dataclasses.dataclass(frozen=True)
class LabelTask:
  format: str  # "classification" | "tagging"
  labels: tuple[str, ...]  # the label names in id order
  examples: Callable[[str, str], list[LabelledRecord]]  # (stdlib-relative path, text) -> records
  # Whether a held-out record copies text pretraining read (None: `_is_copy`); a task that
  # leaves such lines out itself says False.
  is_copy: Callable[[LabelledRecord], bool] | None = None


@functools.cache
def _stdlib(held_out: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
  paths, texts = read_stdlib(task_held_out=held_out)
  return tuple(paths), tuple(texts)


@functools.cache
def _seen_text() -> str:
  """Every file pretraining may read, whitespace runs made one space, joined by NUL."""
  return "\0".join(" ".join(text.split()) for text in _stdlib(False)[1])


@functools.cache
def _seen_code_lines() -> frozenset[str]:
  """Every line of the files pretraining may read, without whitespace, and without what follows a
  "#" too (a comment; the odd "#" in a string only makes more lines count as seen)."""
  lines = (line for text in _stdlib(False)[1] for line in text.split("\n"))
  return frozenset(code for line in lines
                   for code in {"".join(line.split()), "".join(line.split("#", 1)[0].split())})


def _code(tokens: tuple[str, ...]) -> str:
  """A line's tokens as `_seen_code_lines` holds lines: no whitespace, a string's included."""
  return "".join("".join(tokens).split())


def _is_copy(record: LabelledRecord) -> bool:
  if isinstance(record, ClassificationRecord):
    return record.text in _seen_text()
  return _code(record.tokens) in _seen_code_lines()


def _package(rel_path: str) -> str:
  return rel_path.split("/")[0].removesuffix(".py")


def _docstrings(rel_path: str, text: str) -> list[LabelledRecord]:
  """A record per docstring of the file, first paragraph whitespace-collapsed and capped."""
  package = _package(rel_path)
  if package not in PACKAGES:
    return []
  try:
    tree = ast.parse(text)
  except (SyntaxError, ValueError):
    return []
  records = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    docstring = ast.get_docstring(node) or ""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    if len(paragraph) < MIN_DOC_CHARS:
      continue
    if len(paragraph) > MAX_DOC_CHARS:  # cut at the last word that fits
      paragraph = paragraph[:MAX_DOC_CHARS + 1].rsplit(" ", 1)[0]
    records.append(ClassificationRecord(paragraph, package))
  return records


def _logical_lines(text: str) -> list[list[tokenize.TokenInfo]]:
  """The tokens of each logical line, without comments and layout tokens; [] if it does not
  tokenize (a file that only a later Python reads)."""
  lines, current = [], []
  try:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
      if token.type == tokenize.NEWLINE:
        lines.append(current)
        current = []
      elif token.type not in _SKIPPED:
        current.append(token)
  except (tokenize.TokenError, SyntaxError):
    return []
  return lines


def _usable(tokens: list[tokenize.TokenInfo]) -> bool:
  """A logical line on one physical line, of MIN_WORDS..MAX_WORDS short tokens and no f-string
  (tokenized as one STRING before Python 3.12 and as parts after, so the line would get other
  words). One physical line: then a copy of it in another file is a line there."""
  if not MIN_WORDS <= len(tokens) <= MAX_WORDS or tokens[0].start[0] != tokens[-1].end[0]:
    return False
  for token in tokens:
    if len(token.string) > MAX_WORD_CHARS or tokenize.tok_name[token.type].startswith("FSTRING"):
      return False
    if token.type == tokenize.STRING and "f" in token.string.split(token.string[-1])[0].lower():
      return False
  return True


_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))


def _entity(tokens: list[tokenize.TokenInfo], i: int) -> str | None:
  token = tokens[i]
  if token.type == tokenize.STRING:
    return "STRING"
  if token.type == tokenize.NUMBER:
    return "NUMBER"
  if token.type != tokenize.NAME:
    return None
  if keyword.iskeyword(token.string):
    return "KEYWORD"
  after_dot = i > 0 and tokens[i - 1].string == "."
  return "BUILTIN" if token.string in _BUILTINS and not after_dot else None


def python_line_tags(tokens: list[tokenize.TokenInfo]) -> list[str]:
  """The BIO tag of each token of a logical line (see the module docstring)."""
  tags, previous = [], None
  for i, token in enumerate(tokens):
    entity = _entity(tokens, i)
    continues = entity is not None and entity == previous and (
      entity == "STRING" or (entity == "KEYWORD"
                             and (tokens[i - 1].string, token.string) in _KEYWORD_PAIRS))
    tags.append("O" if entity is None else ("I-" if continues else "B-") + entity)
    previous = entity
  return tags


def _tagged_lines(rel_path: str, text: str) -> list[LabelledRecord]:
  """Up to LINES_PER_FILE usable logical lines of the file, evenly spread, each a record."""
  usable = [tokens for tokens in _logical_lines(text) if _usable(tokens)]
  step = max(1, -(-len(usable) // LINES_PER_FILE))
  return [TaggingRecord(tuple(t.string for t in tokens), tuple(python_line_tags(tokens)))
          for tokens in usable[::step]]


def _parses(code: str) -> bool:
  with warnings.catch_warnings():  # e.g. an invalid escape in a string: still valid syntax
    warnings.simplefilter("ignore")
    try:
      ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
      return False
  return True


def syntax_pair(words: list[str]) -> tuple[str, str] | None:
  """(valid, invalid) texts of a line's tokens, or None: the line does not parse by itself, or no
  swap of two adjacent tokens makes it fail. The first swap tried is at a position drawn by a
  hash of the line, then the next ones in turn."""
  valid = " ".join(words)
  if not _parses(valid):
    return None
  first = int(stable_hash(valid), 16)
  for k in range(len(words) - 1):
    i = (first + k) % (len(words) - 1)
    swapped = [*words[:i], words[i + 1], words[i], *words[i + 2:]]
    if swapped != words and not _parses(" ".join(swapped)):
      return valid, " ".join(swapped)
  return None


def _syntax_lines(rel_path: str, text: str) -> list[LabelledRecord]:
  """A valid and an invalid record per line of `_tagged_lines`; in a reserved file, lines whose
  code a file that pretraining reads holds are left out (both records go together)."""
  reserved = is_task_held_out(rel_path)
  records = []
  for line in _tagged_lines(rel_path, text):
    if reserved and _code(line.tokens) in _seen_code_lines():
      continue
    pair = syntax_pair(list(line.tokens))
    if pair is not None:
      records += [ClassificationRecord(pair[0], "valid"), ClassificationRecord(pair[1], "invalid")]
  return records


LABEL_TASKS = {
  "docstring_package": LabelTask("classification", PACKAGES, _docstrings),
  "python_tags": LabelTask("tagging", TAGS, _tagged_lines),
  "python_syntax": LabelTask("classification", ("invalid", "valid"), _syntax_lines,
                             is_copy=lambda record: False),
}


def _docstring_train(examples: list[LabelledRecord]) -> list[LabelledRecord]:
  """Distinct texts with one package (a text two packages share is dropped), at most
  MAX_PER_PACKAGE per package, drawn with TRAIN_SEED; in a fixed order."""
  labels_of_text: dict[str, set[str]] = {}
  for record in examples:
    labels_of_text.setdefault(record.text, set()).add(record.label)
  by_package: dict[str, list[LabelledRecord]] = {}
  for text, labels in sorted(labels_of_text.items()):
    if len(labels) == 1:
      record = ClassificationRecord(text, labels.pop())
      by_package.setdefault(record.label, []).append(record)
  rng = random.Random(TRAIN_SEED)
  chosen = [r for package in sorted(by_package)
            for r in rng.sample(by_package[package], min(MAX_PER_PACKAGE,
                                                         len(by_package[package])))]
  return sorted(chosen, key=lambda r: stable_hash(repr(r)))  # packages interleaved


@functools.cache
def _train_records(name: str) -> tuple[LabelledRecord, ...]:
  task = LABEL_TASKS[name]
  if name == "docstring_package":
    examples = [record for path, text in zip(*_stdlib(False))
                for record in task.examples(path, text)]
    return tuple(_docstring_train(examples))
  records: list[LabelledRecord] = []
  paths, texts = _stdlib(False)
  for i in sorted(range(len(paths)), key=lambda i: stable_hash(paths[i])):
    records += task.examples(paths[i], texts[i])
    if len(records) >= TRAIN_LINES:
      break
  return tuple(records[:TRAIN_LINES])


@functools.cache
def _held_out_records(name: str) -> tuple[LabelledRecord, ...]:
  """Distinct examples of the reserved files but copies, in the order of a hash of each."""
  task = LABEL_TASKS[name]
  is_copy = task.is_copy or _is_copy
  kept = {repr(record): record for path, text in zip(*_stdlib(True))
          for record in task.examples(path, text) if not is_copy(record)}
  return tuple(kept[key] for key in sorted(kept, key=stable_hash))


def load_label_task(name: str, split: str) -> list[LabelledRecord]:
  """One split of a built-in labelled task: the same whatever data.val_fraction pretraining used."""
  if name not in LABEL_TASKS:
    raise UserError(f"unknown labelled task {name!r}; built-in ones: {', '.join(LABEL_TASKS)}")
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; one of {SPLITS}")
  if split == "train":
    return list(_train_records(name))
  held_out = [r for r in _held_out_records(name)
              if (int(stable_hash(repr(r)), 16) % 2 == 0) == (split == "val")]
  return held_out[:EVAL_EXAMPLES]
