"""Compiled gettext catalogs (.mo files), read with `struct` (GNU gettext's format).

A .mo file is a header (magic 0x950412de in the file's byte order, revision, number of strings N,
offsets of the original and translated string tables), then two tables of N (length, offset)
pairs. A plural entry's original is "singular\\0plural" and its translation the forms joined by
"\\0"; a context is written "context\\x04msgid". The entry with the empty msgid is the header,
whose Content-Type names the charset of the rest.
"""

import re
import struct

from jaxlm.errors import UserError

MAGIC = 0x950412DE
_CHARSET = re.compile(rb"charset=([-\w.]+)", re.IGNORECASE)


def _byte_order(data: bytes, path: str) -> str:
  for order in ("<", ">"):
    if len(data) >= 20 and struct.unpack(order + "I", data[:4])[0] == MAGIC:
      return order
  raise UserError(f"{path} is not a gettext .mo file (bad magic number); remove it or rebuild it "
                  "with msgfmt")


def read_mo(path: str) -> list[tuple[str, str]]:
  """(msgid, msgstr) of every entry of the .mo file at `path` but the header, in file order."""
  with open(path, "rb") as f:
    data = f.read()
  order = _byte_order(data, path)
  _, count, originals, translations = struct.unpack(order + "4I", data[4:20])

  def strings(table: int) -> list[bytes]:
    entries = struct.unpack(order + f"{2 * count}I", data[table:table + 8 * count])
    return [data[offset:offset + length] for length, offset in zip(entries[::2], entries[1::2])]

  try:
    pairs = list(zip(strings(originals), strings(translations)))
  except struct.error:
    raise UserError(f"{path} is a damaged .mo file (its tables run past the end); remove it or "
                    "rebuild it with msgfmt") from None
  header = dict(pairs).get(b"", b"")
  match = _CHARSET.search(header)
  charset = match.group(1).decode("ascii") if match else "utf-8"
  if charset.upper() == "CHARSET":  # an unfilled template header
    charset = "utf-8"
  return [(msgid.decode(charset, "replace"), msgstr.decode(charset, "replace"))
          for msgid, msgstr in pairs if msgid]


def write_mo(path: str, entries: list[tuple[str, str]], charset: str = "UTF-8") -> None:
  """A .mo file of `entries` (msgid, msgstr), sorted by msgid as msgfmt writes them, with a
  header naming `charset` (for tests and for users who build a catalog)."""
  header = f"Content-Type: text/plain; charset={charset}\n"
  items = sorted([("", header), *entries], key=lambda e: e[0].encode(charset))
  ids = [msgid.encode(charset) for msgid, _ in items]
  strs = [msgstr.encode(charset) for _, msgstr in items]
  count, start = len(items), 28
  tables_end = start + 16 * count
  blob, originals, translations = b"", [], []
  for table, values in ((originals, ids), (translations, strs)):
    for value in values:
      table.append((len(value), tables_end + len(blob)))
      blob += value + b"\0"
  fields = [MAGIC, 0, count, start, start + 8 * count, 0, tables_end]
  with open(path, "wb") as f:
    f.write(struct.pack("<7I", *fields))
    for length, offset in originals + translations:
      f.write(struct.pack("<2I", length, offset))
    f.write(blob)
