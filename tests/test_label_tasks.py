"""The built-in labelled tasks: held-out examples unseen by pretraining, exact labels (checked by a
re-implementation that reads the token text, not token types), and their packing."""

from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import re
import tokenize

import pytest
from test_data import _raises_one_line

from jaxlm.data import load_corpus
from jaxlm.data.label_tasks import (
  EVAL_EXAMPLES,
  LABEL_TASKS,
  MAX_PER_PACKAGE,
  PACKAGES,
  load_label_task,
  python_line_tags,
  syntax_pair,
)
from jaxlm.data.labelled import (
  ClassificationRecord,
  TaggingRecord,
  check_labels,
  label_vocabulary,
  pack_labelled,
  read_labelled,
)
from jaxlm.data.stdlib_source import read_stdlib


@pytest.fixture(scope="module", params=list(LABEL_TASKS))
def name(request):
  return request.param


@pytest.fixture(scope="module")
def splits(name):
  return {split: load_label_task(name, split) for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def pretraining_docs() -> list[str]:
  """Every document the stdlib corpus gives pretraining: its train and validation files are all
  the unreserved files whatever data.val_fraction (dedup only drops some)."""
  corpus = load_corpus("stdlib", "", "text", 0.1, False)
  return corpus.train + corpus.val


def _code_lines(docs: list[str]) -> set[str]:
  """Each line's code: whitespace and any comment dropped ("#" in a string cuts it short: more
  lines count as seen)."""
  return {re.sub(r"\s", "", code) for doc in docs for line in doc.split("\n")
          for code in (line, line.split("#")[0])}


def _swapped_back(text: str) -> list[str]:
  """The texts that swapping two adjacent tokens of `text` gives (tokens by `tokenize`: a string
  may hold spaces)."""
  layout = (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)
  words = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
           if t.type not in layout]
  assert " ".join(words) == text
  return [" ".join([*words[:i], words[i + 1], words[i], *words[i + 2:]])
          for i in range(len(words) - 1)]


def _parses(text: str) -> bool:
  try:
    compile(text, "<line>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
  except SyntaxError:
    return False
  return True


def test_held_out_examples_occur_in_no_pretraining_document(name, splits, pretraining_docs):
  if name == "python_syntax":  # a valid line's code is unseen, and so is an invalid one's source
    seen_lines = _code_lines(pretraining_docs)
    for record in (r for split in ("val", "test") for r in splits[split]):
      sources = [record.text] if record.label == "valid" else [
          t for t in _swapped_back(record.text) if _parses(t)]
      assert any("".join(t.split()) not in seen_lines for t in sources), record
  elif LABEL_TASKS[name].format == "classification":
    seen = "\0".join(" ".join(doc.split()) for doc in pretraining_docs)
    for split in ("val", "test"):
      assert not [r.text for r in splits[split] if r.text in seen]
  else:
    seen_lines = _code_lines(pretraining_docs)
    for split in ("val", "test"):
      assert not [r.tokens for r in splits[split] if re.sub(r"\s", "", "".join(r.tokens))
                  in seen_lines]


def test_splits_are_non_empty_disjoint_and_capped(name, splits):
  val, test, train = (set(map(repr, splits[s])) for s in ("val", "test", "train"))
  assert 50 < len(val) <= EVAL_EXAMPLES and 50 < len(test) <= EVAL_EXAMPLES
  assert len(train) > 1000
  assert not val & test and not (val | test) & train
  assert load_label_task(name, "val") == splits["val"]  # cached, and the same list each time


def test_records_are_valid_labelled_data(name, splits, tmp_path):
  """Written as JSONL, every split reads back through the labelled-data checks unchanged."""
  task = LABEL_TASKS[name]
  assert label_vocabulary(splits["train"], ()) == task.labels  # data.labels=() gives these ids
  for split, records in splits.items():
    check_labels(records, task.labels, split)
    path = tmp_path / f"{split}.jsonl"
    fields = ({"text": r.text, "label": r.label} if isinstance(r, ClassificationRecord)
              else {"tokens": list(r.tokens), "tags": list(r.tags)} for r in records)
    path.write_text("".join(json.dumps(f) + "\n" for f in fields), encoding="utf-8")
    assert read_labelled(str(path), task.format) == records


def _package_texts(held_out: bool) -> dict[str, str]:
  texts: dict[str, list[str]] = {}
  for path, text in zip(*read_stdlib(task_held_out=held_out)):
    texts.setdefault(path.split("/")[0].removesuffix(".py"), []).append(" ".join(text.split()))
  return {package: "\0".join(parts) for package, parts in texts.items()}


def test_docstring_package_labels_name_the_package_holding_the_text():
  splits = {s: load_label_task("docstring_package", s) for s in ("train", "val", "test")}
  for held_out, names in [(False, ("train",)), (True, ("val", "test"))]:
    texts = _package_texts(held_out)
    for record in (r for s in names for r in splits[s]):
      assert record.label in PACKAGES and record.text in texts[record.label], record
  counts = {p: sum(r.label == p for r in splits["train"]) for p in PACKAGES}
  assert max(counts.values()) == MAX_PER_PACKAGE and min(counts.values()) >= 10
  assert LABEL_TASKS["docstring_package"].labels == PACKAGES == tuple(sorted(PACKAGES))


_PUBLIC_BUILTINS = {n for n in dir(builtins) if not n.startswith("_")}
_STRING = re.compile(r"(?i)[rbu]{0,2}('|\")")
_NUMBER = re.compile(r"(?i)0x[0-9a-f_]+|0o[0-7_]+|0b[01_]+|[0-9_]*\.?[0-9_]*(e[-+]?[0-9_]+)?j?")


def _reference_tags(words: tuple[str, ...]) -> list[str]:
  """The tags from the words' text alone (the task reads token types)."""
  tags = []
  for i, word in enumerate(words):
    if keyword.iskeyword(word):
      pair = (words[i - 1], word) in {("not", "in"), ("is", "not"), ("yield", "from")}
      tags.append("I-KEYWORD" if i and pair else "B-KEYWORD")
    elif _STRING.match(word):
      tags.append("I-STRING" if i and _STRING.match(words[i - 1]) else "B-STRING")
    elif word[0].isdigit() or (word[0] == "." and word[1:2].isdigit()):
      assert _NUMBER.fullmatch(word), word
      tags.append("B-NUMBER")
    elif word in _PUBLIC_BUILTINS and not (i and words[i - 1] == "."):
      tags.append("B-BUILTIN")
    else:
      tags.append("O")
  return tags


def test_python_tags_match_a_reference_reading_the_words():
  records = [r for s in ("train", "val", "test") for r in load_label_task("python_tags", s)]
  for record in records:
    assert list(record.tags) == _reference_tags(record.tokens), record
  tags = {t for r in records for t in r.tags}
  assert tags >= {"O", "B-KEYWORD", "I-KEYWORD", "B-BUILTIN", "B-STRING", "B-NUMBER"}
  assert tags <= set(LABEL_TASKS["python_tags"].labels)


def _tags_of(line: str) -> list[tuple[str, str]]:
  tokens = [t for t in tokenize.generate_tokens(io.StringIO(line).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.COMMENT)]
  return list(zip([t.string for t in tokens], python_line_tags(tokens)))


def test_python_line_tags_hand_written():
  assert _tags_of("if x is not None and y not in (1, 'a' b'b'): print(len(os.open))  # c\n") == [
    ("if", "B-KEYWORD"), ("x", "O"), ("is", "B-KEYWORD"), ("not", "I-KEYWORD"),
    ("None", "B-KEYWORD"), ("and", "B-KEYWORD"), ("y", "O"), ("not", "B-KEYWORD"),
    ("in", "I-KEYWORD"), ("(", "O"), ("1", "B-NUMBER"), (",", "O"), ("'a'", "B-STRING"),
    ("b'b'", "I-STRING"), (")", "O"), (":", "O"), ("print", "B-BUILTIN"), ("(", "O"),
    ("len", "B-BUILTIN"), ("(", "O"), ("os", "O"), (".", "O"), ("open", "O"), (")", "O"),
    (")", "O")]
  assert [t for _, t in _tags_of("yield from 0x1F, 2.5j, not in_\n")] == [
    "B-KEYWORD", "I-KEYWORD", "B-NUMBER", "O", "B-NUMBER", "O", "B-KEYWORD", "O"]


def test_splits_pack_with_a_wordpiece_tokenizer(name, splits):
  from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer
  first = splits["train"][:200]
  texts = [r.text if isinstance(r, ClassificationRecord) else " ".join(r.tokens) for r in first]
  tok = WordPieceTokenizer.train(texts, 300)
  packed = pack_labelled(splits["test"], tok, 64, LABEL_TASKS[name].labels, "test")
  labelled = sum(1 if isinstance(r, ClassificationRecord) else len(r.tokens)
                 for r in splits["test"])
  assert packed.num_examples == len(splits["test"])
  assert packed.weights.sum() + packed.cut_words == labelled
  assert isinstance(splits["test"][0], ClassificationRecord | TaggingRecord)


def test_unknown_task_or_split():
  with _raises_one_line("unknown labelled task 'nope'; built-in ones: docstring_package"):
    load_label_task("nope", "train")
  with _raises_one_line("unknown split 'dev'"):
    load_label_task("python_tags", "dev")


def test_python_syntax_labels_are_the_parsers_and_invalid_is_one_swap_from_valid():
  """Checked with `compile` (not the task's code): a valid text parses, an invalid one does not
  and swapping two adjacent words back gives one that does; each split about half of each."""
  for split in ("train", "val", "test"):
    records = load_label_task("python_syntax", split)
    for record in records:
      assert _parses(record.text) == (record.label == "valid"), record
      if record.label == "invalid":
        assert any(_parses(t) for t in _swapped_back(record.text)), record
    valid = sum(r.label == "valid" for r in records)
    assert 0.45 < valid / len(records) < 0.55, (split, valid, len(records))


def test_syntax_pair_hand_written():
  valid, invalid = syntax_pair(["x", "=", "f", "(", "a", ")"])
  assert valid == "x = f ( a )"
  assert invalid in _swapped_back(valid) and not _parses(invalid)
  assert syntax_pair(["if", "x", ":"]) is None  # needs a block: not valid by itself
  assert syntax_pair(["pass"]) is None  # no two tokens to swap
