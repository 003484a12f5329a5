"""The built-in task's held-out functions: in no pretraining split of the built-in corpus."""

import itertools

import pytest

from jaxlm import tasks
from jaxlm.data import load_corpus
from jaxlm.data import stdlib_source

VAL_FRACTIONS = (0.01, 0.1, 0.5, 0.9)


def _lines_stripped(text: str) -> str:
  """`text` with each line's indentation dropped, so a dedented function matches its file."""
  return "\n".join(line.strip() for line in text.split("\n"))


@pytest.fixture(scope="module")
def held_out():
  return {split: tasks.pyfunc_names(split) for split in ("val", "test")}


@pytest.fixture(scope="module")
def pretraining_text():
  """Every train and val document of the stdlib corpus under every val_fraction and dedup setting,
  indentation-stripped, in one string: a function occurs in one of those documents iff it occurs
  in this string (documents are joined by NUL, which Python source never holds)."""
  docs = set()
  for val_fraction, dedup in itertools.product(VAL_FRACTIONS, (False, True)):
    corpus = load_corpus("stdlib", "", "text", val_fraction, dedup)
    assert corpus.train and corpus.val
    docs.update(corpus.train)
    docs.update(corpus.val)
  return "\0".join(_lines_stripped(doc) for doc in sorted(docs))


def test_held_out_functions_occur_in_no_pretraining_document(held_out, pretraining_text):
  for split, records in held_out.items():
    for record in records:
      # The function's source as the prompt shows it: the prompt with the name put back.
      shown = record.prompt.removesuffix(tasks.PROMPT_SUFFIX)
      source = shown.replace(tasks.MASK, record.completion)
      assert _lines_stripped(source) not in pretraining_text, (split, source)


def test_val_and_test_are_non_empty_disjoint_and_unseen_in_the_tasks_train_split(held_out):
  val, test = ({(r.prompt, r.completion) for r in held_out[s]} for s in ("val", "test"))
  assert len(val) > 100 and len(test) > 100
  assert not val & test
  # Identical prompts may differ in name (`def ___(self): pass`), but no example is in train.
  assert not {(r.prompt, r.completion) for r in tasks.pyfunc_names("train")} & (val | test)


def test_pretraining_reads_every_stdlib_file_but_the_reserved_ones():
  root = stdlib_source.sysconfig.get_paths()["stdlib"]
  paths = stdlib_source.stdlib_files(root)
  reserved = [p for p in paths if stdlib_source.is_task_held_out(p)]
  assert 0.02 * len(paths) < len(reserved) < 0.1 * len(paths)  # about 5% of hash space
  texts = {p: stdlib_source.read_if_utf8(f"{root}/{p}") for p in paths}
  others = sorted(t for p, t in texts.items() if t is not None and p not in reserved)
  for val_fraction in VAL_FRACTIONS:
    train, val = stdlib_source.load_stdlib(val_fraction)
    assert train and val and sorted(train + val) == others
