"""Raw documents from a named source, cleaned and split into train/val."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxlm.data.clean import clean_documents
from jaxlm.data.file_source import load_files
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
      f"data.path={path!r} is only for data.source=files or tfds; leave it empty for data.source=stdlib"
    )
  return load_stdlib(val_fraction)


_READERS: dict[str, Callable[[str, str, float], tuple[list[str], list[str]]]] = {
  "stdlib": _read_stdlib,
  "files": load_files,
  "tfds": load_tfds,
}


def load_corpus(
  source: str, path: str, text_field: str, val_fraction: float, dedup: bool
) -> Corpus:
  """Reads `source` ("stdlib", "files" or "tfds"), splits it deterministically
  and cleans both splits (see clean.clean_documents)."""
  if source not in _READERS:
    raise UserError(f"unknown data.source={source!r}; choose one of {', '.join(sorted(_READERS))}")
  check_val_fraction(val_fraction)
  raw_train, raw_val = _READERS[source](path, text_field, val_fraction)
  train = clean_documents(raw_train, dedup)
  # Dedup over train+val as one corpus: a validation document that also
  # occurs in train would overstate how well the model generalises.
  val = clean_documents(raw_val, dedup)
  if dedup:
    in_train = set(train)
    val = [doc for doc in val if doc not in in_train]
  if not train:
    raise UserError(
      f"the corpus is empty after cleaning: {source} {path!r} has no non-blank training documents; "
      "check data.source, data.path and data.text_field"
    )
  if not val:
    raise UserError(
      f"the validation split of {source} {path!r} is empty after cleaning; "
      "use a larger data.val_fraction or more files"
    )
  return Corpus(train=train, val=val)
