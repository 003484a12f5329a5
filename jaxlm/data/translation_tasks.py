"""Built-in translation tasks from the gettext catalogs of the machine (no download).

`gettext_en_XX` pairs each English UI message of the compiled catalogs
`LOCALE_ROOTS/XX/LC_MESSAGES/*.mo` with its translation (read with `mo_file.read_mo`). Cleaning:
plural entries give (singular, first form) and (plural, second form); contexts are dropped;
GTK / Qt accelerators (`_File`, `&File`) are stripped, placeholders (`%s`, `%1$d`, `%(name)s`,
`{name}`, `${VAR}`) all become `{}` and whitespace runs one space; a pair goes when its message has
fewer than MIN_LETTERS letters (format-only or very short), is longer than MAX_CHARS, is left
untranslated, or its two sides hold different numbers of placeholders. Pairs are deduplicated.

The split is by catalog (its domain, the file name, so a domain is held out in every language):
a stable hash of the domain puts it in test, validation or train, and a validation or test pair
whose English message occurs in a training catalog is dropped, so evaluation messages were never
trained on. Validation and test keep at most EVAL_EXAMPLES pairs each (spread over their catalogs
by a hash of the pair).
"""

import functools
import glob
import os
import re

from jaxlm.data.mo_file import read_mo
from jaxlm.data.records import Record
from jaxlm.data.seq2seq import Pair
from jaxlm.data.splits import hash_fraction, stable_hash
from jaxlm.errors import UserError

# Debian / Ubuntu catalogs; language packs (language-pack-XX) install theirs in the second.
LOCALE_ROOTS = ("/usr/share/locale", "/usr/share/locale-langpack")
PREFIX = "gettext_en_"
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "ru": "Russian",
             "sv": "Swedish"}
SPLITS = ("train", "val", "test")
TEST_SHARE, VAL_SHARE = 0.1, 0.1  # of the catalogs (domains), by hash
MIN_LETTERS, MAX_CHARS = 3, 300
EVAL_EXAMPLES = 256
PROMPT_SUFFIX = "\n{language}: "  # the prompt of a decoder-only model: source, then this
BLEU_TOKENIZE, MAX_NEW_TOKENS = "13a", 96  # for `evaluate --task`

_PLACEHOLDER = re.compile(
  r"%(?:\d+\$)?(?:\([A-Za-z_]\w*\))?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
  r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcspn]"
  r"|%(?:\d+\$)?<PRI\w+>|\{[A-Za-z_0-9]*(?::[^{}]*)?\}|\$\{\w+\}|\$\w+")
_MNEMONIC = re.compile(r"[_&](?=[^\W_])")  # "_File", "Sa_ve", "&Open": before a letter or digit
_SPACE = re.compile(r"\s+")


def is_translation_task(name: str) -> bool:
  return name.startswith(PREFIX) and name[len(PREFIX):] in LANGUAGES


def clean_message(text: str) -> str:
  """Accelerators stripped, placeholders as `{}`, whitespace runs one space, trimmed."""
  text = _PLACEHOLDER.sub("\0", text.replace("&&", "\1"))
  # One "_" or "&" is an accelerator; more are part of the text (identifiers, "R&D & more").
  text = _MNEMONIC.sub("", text) if text.count("_") + text.count("&") == 1 else text
  text = text.replace("\1", "&").replace("\0", "{}")
  return _SPACE.sub(" ", text).strip()


def _keep(source: str, target: str) -> bool:
  letters = sum(ch.isalpha() for ch in _PLACEHOLDER.sub("", source.replace("{}", "")))
  return (letters >= MIN_LETTERS and len(source) <= MAX_CHARS and len(target) <= MAX_CHARS and
          bool(target) and target != source and source.count("{}") == target.count("{}"))


def catalog_pairs(path: str) -> list[Pair]:
  """The cleaned pairs of one .mo file, in its order, without repeats."""
  pairs = []
  for msgid, msgstr in read_mo(path):
    ids, strs = msgid.split("\0"), msgstr.split("\0")
    for source, target in zip(ids, strs):  # singular -> form 0, plural -> form 1
      source = clean_message(source.split("\x04")[-1])  # context "ctx\x04msgid"
      target = clean_message(target)
      if _keep(source, target):
        pairs.append(Pair(source, target))
  return list(dict.fromkeys(pairs))


def catalogs(language: str, roots=None) -> dict[str, list[str]]:
  """The .mo files of `language` by domain (one domain can sit under several roots), sorted."""
  found: dict[str, list[str]] = {}
  for root in LOCALE_ROOTS if roots is None else roots:
    for path in sorted(glob.glob(os.path.join(root, language, "LC_MESSAGES", "*.mo"))):
      found.setdefault(os.path.basename(path)[:-3], []).append(path)
  return dict(sorted(found.items()))


def split_of(domain: str) -> str:
  """"test", "val" or "train" for a catalog domain, by a stable hash of its name."""
  where = hash_fraction("gettext:" + domain)
  return "test" if where < TEST_SHARE else "val" if where < TEST_SHARE + VAL_SHARE else "train"


@functools.lru_cache(maxsize=None)
def _splits(language: str, roots: tuple[str, ...]) -> dict[str, tuple[Pair, ...]]:
  files = catalogs(language, roots)
  if not files:
    where = ", ".join(os.path.join(root, language, "LC_MESSAGES") for root in roots)
    raise UserError(f"task gettext_en_{language} reads the gettext catalogs (*.mo) in {where}, "
                    f"and there are none; install them (apt install language-pack-{language}) "
                    "or give your own JSONL pairs with data.source=files data.path=FILE")
  by_split: dict[str, list[Pair]] = {split: [] for split in SPLITS}
  for domain, paths in files.items():
    by_split[split_of(domain)] += [pair for path in paths for pair in catalog_pairs(path)]
  train = tuple(dict.fromkeys(by_split["train"]))
  seen = {pair.source for pair in train}
  out = {"train": train}
  for split in ("val", "test"):
    held_out = [p for p in dict.fromkeys(by_split[split]) if p.source not in seen]
    held_out.sort(key=lambda p: stable_hash(p.source + "\0" + p.target))
    out[split] = tuple(held_out[:EVAL_EXAMPLES])
  return out


def load_translation(name: str, split: str, roots=None) -> list[Pair]:
  """One split of `gettext_en_XX` as (English, XX) pairs."""
  if not is_translation_task(name):
    known = ", ".join(PREFIX + lang for lang in LANGUAGES)
    raise UserError(f"unknown translation task {name!r}; built-in ones: {known}")
  if split not in SPLITS:
    raise UserError(f"unknown split {split!r}; one of {SPLITS}")
  return list(_splits(name[len(PREFIX):], tuple(LOCALE_ROOTS if roots is None else roots))[split])


def as_records(name: str, pairs: list[Pair]) -> list[Record]:
  """Pairs as prompt/completion records, for a decoder-only model: the source, then
  "\\nGerman: " (the target language's name), completed by the translation."""
  suffix = PROMPT_SUFFIX.format(language=LANGUAGES[name[len(PREFIX):]])
  return [Record(p.source + suffix, p.target) for p in pairs]


def load_seq2seq_task(name: str, split: str) -> list[Pair]:
  """A built-in task as seq2seq pairs: a translation task's, or a prompt/completion task's
  records read as source/target."""
  if is_translation_task(name):
    return load_translation(name, split)
  from jaxlm.data.tasks import load_task  # tasks imports this module
  return [Pair(r.prompt, r.completion) for r in load_task(name, split)]
