"""User text files: .txt (one document per file), .jsonl / .jsonl.gz (one per line) and .parquet
(one per row, from the text column)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator, Sequence

from jaxlm.data.clean import read_utf8
from jaxlm.data.splits import split_by_hash, split_tail, split_text
from jaxlm.errors import UserError

_DIR_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # files of many documents


def resolve_files(path: str) -> tuple[list[str], str]:
  """Expands data.path (a file, a directory or a glob) to sorted files and
  the root that their split keys are relative to."""
  if not path:
    raise UserError("data.path is empty; set --config.data.path to a file, directory or glob")
  if os.path.isfile(path):
    return [path], os.path.dirname(path)
  if os.path.isdir(path):
    files = sorted(
      os.path.join(dirpath, name)
      for dirpath, _, names in os.walk(path)
      for name in names
      if name.endswith(_DIR_SUFFIXES)
    )
    if not files:
      raise UserError(
        f"directory {path} holds no .txt, .jsonl, .jsonl.gz or .parquet files; point data.path "
        "at your data"
      )
    return files, path
  if glob.has_magic(path):
    files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    if not files:
      raise UserError(f"data.path glob {path!r} matches no files; check the pattern")
    return files, os.path.commonpath([os.path.dirname(f) for f in files])
  raise UserError(f"data.path {path!r} does not exist; give a file, a directory or a glob")


def first_jsonl_record(path: str) -> dict | None:
  """The first record of the first file at data.path, when that is a .jsonl file (else None)."""
  try:
    files, _ = resolve_files(path)
  except UserError:
    return None
  if not files[0].endswith(".jsonl"):
    return None
  return next((record for _, record in iter_jsonl(files[0])), None)


def iter_jsonl(path: str):
  """(line number, record) for every non-blank line; a line that is not a JSON
  object is an error naming the file and line."""
  for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(
        f"{path}:{lineno}: malformed JSON ({e.msg}); each line of a .jsonl file must be one JSON object"
      ) from None
    if not isinstance(record, dict):
      raise UserError(
        f"{path}:{lineno}: a JSON {type(record).__name__}, not an object; "
        "each line of a .jsonl file must be one JSON object"
      )
    yield lineno, record


def read_jsonl(path: str, text_field: str) -> list[str]:
  """The `text_field` string of every record (blank lines are skipped)."""
  docs = []
  for lineno, record in iter_jsonl(path):
    text = record.get(text_field)
    if not isinstance(text, str):
      raise UserError(
        f"{path}:{lineno}: record has no string field {text_field!r}; "
        "set --config.data.text_field to the field that holds the text"
      )
    docs.append(text)
  return docs


def read_parquet(path: str, text_field: str) -> list[str]:
  """The `text_field` column of a Parquet file, one document per row."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel  (tfds brings pyarrow)
  try:
    names = pq.read_schema(path).names
    if text_field not in names:
      raise UserError(f"{path}: no column {text_field!r} (columns: {', '.join(names)}); set "
                      "--config.data.text_field to the column that holds the text")
    column = pq.read_table(path, columns=[text_field]).column(text_field)
  except (OSError, ValueError) as e:
    if isinstance(e, UserError):
      raise
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{path} is not a readable Parquet file ({first}); check data.path") from None
  if not (column.type.equals("string") or column.type.equals("large_string")):
    raise UserError(f"{path}: column {text_field!r} holds {column.type}, not strings; set "
                    "--config.data.text_field to the column that holds the text")
  return [text for text in column.to_pylist() if text is not None]


def read_documents(path: str, text_field: str) -> list[str]:
  """.jsonl(.gz) files hold one document per line, .parquet one per row; any other file is one
  document."""
  if path.endswith((".jsonl", ".jsonl.gz")):
    return read_jsonl(path, text_field)
  if path.endswith(".parquet"):
    return read_parquet(path, text_field)
  return [read_utf8(path)]


@dataclasses.dataclass(frozen=True)
class FileDocuments:
  """The documents of some files, read one file at a time each time it is iterated."""
  files: Sequence[str]
  text_field: str

  def __iter__(self) -> Iterator[str]:
    for path in self.files:
      yield from read_documents(path, self.text_field)


def load_files(path: str, text_field: str, val_fraction: float) -> tuple[list[str], list[str]]:
  """Returns raw (train, val) documents (for several files, iterables that read a file at a time,
  each time they are iterated). Several files are split by a stable
  hash of their relative paths; a single file is split inside: by characters
  for a text file (as nanoGPT does), by trailing documents for .jsonl."""
  files, root = resolve_files(path)
  if len(files) == 1:
    if files[0].endswith(_RECORD_SUFFIXES):
      return split_tail(read_documents(files[0], text_field), val_fraction)
    train_text, val_text = split_text(read_utf8(files[0]), val_fraction)
    return [train_text], [val_text]
  keys = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
  train_idx, val_idx = split_by_hash(keys, val_fraction)
  return (FileDocuments([files[i] for i in train_idx], text_field),
          FileDocuments([files[i] for i in val_idx], text_field))
