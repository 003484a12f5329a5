"""Raw documents from a named source, cleaned and split into train/val."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxlm.data.clean import iter_clean
from jaxlm.data.file_source import load_files
from jaxlm.data.hf_source import load_hf
from jaxlm.data.splits import check_val_fraction
from jaxlm.data.stdlib_source import load_stdlib
from jaxlm.data.tfds_source import load_tfds
from jaxlm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: list[str]  # cleaned documents
  val: list[str]


def _read_stdlib(path: str, text_field: str, val_fraction: float) -> tuple[list[str], list[str]]:
  del text_field  # stdlib files are plain text
  if path:
    raise UserError(
      f"data.path={path!r} is only for data.source=files, tfds or hf; leave it empty for data.source=stdlib"
    )
  return load_stdlib(val_fraction)


_READERS: dict[str, Callable[[str, str, float], tuple[list[str], list[str]]]] = {
  "stdlib": _read_stdlib,
  "files": load_files,
  "tfds": load_tfds,
  "hf": load_hf,
}


def load_corpus(
  source: str, path: str, text_field: str, val_fraction: float, dedup: bool
) -> Corpus:
  """Reads `source` ("stdlib", "files", "tfds" or "hf"), splits it deterministically
  and cleans both splits (see clean.clean_documents)."""
  raw_train, raw_val = read_raw(source, path, text_field, val_fraction)
  seen: set[bytes] = set()  # train's digests first: val drops what train holds
  train = list(iter_clean(raw_train, dedup, seen))
  val = list(iter_clean(raw_val, dedup, seen))
  check_nonempty(source, path, len(train), len(val))
  return Corpus(train=train, val=val)


def read_raw(source: str, path: str, text_field: str, val_fraction: float):
  """(train, val) raw documents of `source`, uncleaned: lists, or for several files iterables
  that read one file at a time (see file_source.stream_files)."""
  if source not in _READERS:
    raise UserError(f"unknown data.source={source!r}; choose one of {', '.join(sorted(_READERS))}")
  check_val_fraction(val_fraction)
  return _READERS[source](path, text_field, val_fraction)


def check_nonempty(source: str, path: str, num_train: int, num_val: int) -> None:
  if not num_train:
    raise UserError(
      f"the corpus is empty after cleaning: {source} {path!r} has no non-blank training documents; "
      "check data.source, data.path and data.text_field"
    )
  if not num_val:
    raise UserError(
      f"the validation split of {source} {path!r} is empty after cleaning; "
      "use a larger data.val_fraction or more files"
    )
