"""The gettext translation tasks: .mo files written here and read back by the standard `gettext`
module (an independent reader), cleaning, deduplication, the split by catalog, the prompt /
completion view, and the one-line error without catalogs. Only the count on the system catalogs
needs /usr/share/locale (skipped where it is missing)."""

import gettext
import glob
import hashlib
import struct

import pytest

from jaxlm.config import base_config
from jaxlm.data import translation_tasks as tt
from jaxlm.data.dataset import DataConfig, read_corpus
from jaxlm.data.mo_file import read_mo, write_mo
from jaxlm.data.seq2seq import Pair
from jaxlm.data.tasks import load_task
from jaxlm.errors import UserError

ENTRIES = [
  ("_Open File", "Datei _öffnen"),  # accelerators
  ("&Save the document", "Dokument &speichern"),
  ("Copied %d of %s files", "%d von %s Dateien kopiert"),  # placeholders
  ("Hello {name}, welcome", "Hallo {name}, willkommen"),
  ("one file removed\0%d files removed", "eine Datei entfernt\0%d Dateien entfernt"),  # plural
  ("menu\x04Quit the program", "Programm beenden"),  # a context
  ("%s: %s", "%s: %s"),  # format only
  ("OK", "OK"),  # very short
  ("Untranslated message", "Untranslated message"),
  ("Lost %s placeholder", "Platzhalter verloren"),  # placeholder counts differ
  ("Multiple\n   spaces  here", "Mehrere   Leerzeichen\nhier"),
]
CLEAN = [
  Pair("Open File", "Datei öffnen"),
  Pair("Save the document", "Dokument speichern"),
  Pair("Copied {} of {} files", "{} von {} Dateien kopiert"),
  Pair("Hello {}, welcome", "Hallo {}, willkommen"),
  Pair("one file removed", "eine Datei entfernt"),
  Pair("{} files removed", "{} Dateien entfernt"),
  Pair("Quit the program", "Programm beenden"),
  Pair("Multiple spaces here", "Mehrere Leerzeichen hier"),
]


def test_written_mo_reads_back_with_the_standard_module(tmp_path):
  path = str(tmp_path / "x.mo")
  write_mo(path, ENTRIES)
  with open(path, "rb") as f:
    catalog = gettext.GNUTranslations(f)
  assert catalog.gettext("_Open File") == "Datei _öffnen"
  assert catalog.ngettext("one file removed", "%d files removed", 5) == "%d Dateien entfernt"
  assert catalog.pgettext("menu", "Quit the program") == "Programm beenden"
  stdlib = {k: v for k, v in catalog._catalog.items() if isinstance(k, str) and k}
  mine = {k: v for k, v in read_mo(path) if "\0" not in k}
  assert mine == stdlib


def test_big_endian_and_damaged_files(tmp_path):
  path = tmp_path / "x.mo"
  write_mo(str(path), ENTRIES[:2])
  data = path.read_bytes()
  # The same file in big-endian order: every 32-bit field of header and tables swapped.
  count = struct.unpack("<I", data[8:12])[0]
  words = struct.unpack(f"<{7 + 4 * count}I", data[:28 + 16 * count])
  big = tmp_path / "big.mo"
  big.write_bytes(struct.pack(f">{len(words)}I", *words) + data[28 + 16 * count:])
  assert read_mo(str(big)) == read_mo(str(path))
  bad = tmp_path / "bad.mo"
  bad.write_bytes(b"not a catalog at all....")
  with pytest.raises(UserError, match="bad.mo is not a gettext .mo file"):
    read_mo(str(bad))
  bad.write_bytes(data[:40])
  with pytest.raises(UserError, match="bad.mo is a damaged .mo file"):
    read_mo(str(bad))


def test_cleaning(tmp_path):
  path = str(tmp_path / "x.mo")
  write_mo(path, ENTRIES + ENTRIES[:1])  # a repeat is kept once
  assert sorted(tt.catalog_pairs(path), key=repr) == sorted(CLEAN, key=repr)
  assert tt.clean_message("R&&D and file_name_x") == "R&D and file_name_x"  # not accelerators
  assert tt.clean_message("%1$s of %2$ld, %(count)d, ${HOME}, 100%%") == "{} of {}, {}, {}, 100%%"


def split_of(domain):
  """The split rule written out: sha1 of "gettext:" + domain, the lowest 10% test, next val."""
  where = int(hashlib.sha1(("gettext:" + domain).encode()).hexdigest(), 16) / 16**40
  return "test" if where < 0.1 else "val" if where < 0.2 else "train"


@pytest.fixture
def locale_root(tmp_path, monkeypatch):
  """Catalogs of domains falling in each split; train and test share one message."""
  domains = {}
  for i in range(200):
    domains.setdefault(split_of(f"dom{i}"), []).append(f"dom{i}")
  chosen = {split: names[:2] for split, names in domains.items()}
  root = tmp_path / "locale"
  (root / "de" / "LC_MESSAGES").mkdir(parents=True)
  for split, names in chosen.items():
    for name in names:
      entries = [(f"{name} message number {k}", f"{name} Nachricht Nummer {k}") for k in range(3)]
      entries.append(("Shared message", f"Geteilt {split}"))
      write_mo(str(root / "de" / "LC_MESSAGES" / f"{name}.mo"), entries)
  monkeypatch.setattr(tt, "LOCALE_ROOTS", (str(root),))
  tt._splits.cache_clear()
  yield chosen
  tt._splits.cache_clear()


def test_split_by_catalog(locale_root):
  splits = {split: tt.load_translation("gettext_en_de", split) for split in tt.SPLITS}
  for split, pairs in splits.items():
    domains = {p.source.split()[0] for p in pairs if p.source != "Shared message"}
    assert domains == set(locale_root[split])
  # The shared message is trained on, so it is in no evaluation split; deduplicated in train.
  assert [p.target for p in splits["train"] if p.source == "Shared message"] == ["Geteilt train"]
  assert all(p.source != "Shared message" for p in splits["val"] + splits["test"])
  records = load_task("gettext_en_de", "test")
  assert [(r.prompt, r.completion) for r in records] == [
      (p.source + "\nGerman: ", p.target) for p in splits["test"]]
  c = base_config().data
  c.update(source="task", path="gettext_en_de")
  data_cfg = DataConfig.from_config(c)
  assert data_cfg.resolved_format == "seq2seq"
  corpus = read_corpus(data_cfg)
  assert corpus.train == splits["train"] and corpus.val == splits["val"]


def test_no_catalogs_is_a_one_line_error(tmp_path, monkeypatch):
  monkeypatch.setattr(tt, "LOCALE_ROOTS", (str(tmp_path),))
  with pytest.raises(UserError, match=r"install them \(apt install language-pack-fr\)") as e:
    tt.load_translation("gettext_en_fr", "train")
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="unknown translation task 'gettext_en_xx'"):
    tt.load_translation("gettext_en_xx", "train")


@pytest.mark.skipif(not glob.glob("/usr/share/locale/de/LC_MESSAGES/*.mo"),
                    reason="needs the system's German gettext catalogs")
def test_system_catalogs_give_thousands_of_pairs():
  train = tt.load_translation("gettext_en_de", "train")
  test = tt.load_translation("gettext_en_de", "test")
  assert len(train) > 5000 and len(test) == tt.EVAL_EXAMPLES
  seen = {p.source for p in train}
  assert not seen & {p.source for p in test}
