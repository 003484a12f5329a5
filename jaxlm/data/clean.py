"""Reading text files and normalising documents before tokenization."""

from __future__ import annotations

import gzip
import hashlib
import unicodedata
from collections.abc import Iterable, Iterator

from jaxlm.errors import UserError


def read_utf8(path: str) -> str:
  """Returns the text of `path`, which must be UTF-8 (a leading BOM is dropped); a `.gz` file is
  decompressed first."""
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    if b"\0" in raw:
      raise UserError(
        f"{path} is a binary file, not text (NUL byte at offset {raw.index(0)}); "
        "point data.path at UTF-8 text (.txt or .jsonl) files"
      ) from None
    raise UserError(
      f"{path} is not valid UTF-8 (bad byte at offset {e.start}); "
      "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
    ) from None
  # Editors on Windows add a BOM; it is not part of the text.
  return text.removeprefix("\ufeff")


def normalize_text(text: str) -> str:
  """Unicode NFC and Unix newlines, so equal-looking text tokenizes equally."""
  if not unicodedata.is_normalized("NFC", text):
    text = unicodedata.normalize("NFC", text)
  if "\r" in text:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
  return text


def iter_clean(docs: Iterable[str], dedup: bool, seen: set[bytes]) -> Iterator[str]:
  """Normalised `docs` without blank ones and, if `dedup`, without any whose digest is in `seen`
  (to which each kept one's is added): streamed, so a corpus need not fit in memory. Sharing
  `seen` between the splits (train first) drops validation documents that occur in train."""
  for doc in docs:
    doc = normalize_text(doc)
    if not doc.strip():
      continue
    if dedup:
      digest = hashlib.sha1(doc.encode("utf-8", "surrogatepass")).digest()
      if digest in seen:
        continue
      seen.add(digest)
    yield doc


def clean_documents(docs: Iterable[str], dedup: bool) -> list[str]:
  """Normalises `docs`, drops blank ones and, if `dedup`, exact duplicates
  (keeping the first occurrence; order is preserved)."""
  return list(iter_clean(docs, dedup, set()))
