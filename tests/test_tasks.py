"""The built-in tasks: held-out functions in no pretraining split of the built-in corpus, and
answers checked against Python's own view of each function."""

import itertools

import pytest

from jaxlm.data import load_corpus, stdlib_source, tasks

VAL_FRACTIONS = (0.01, 0.1, 0.5, 0.9)


def _lines_stripped(text: str) -> str:
  """`text` with each line's indentation dropped, so a dedented function matches its file."""
  return "\n".join(line.strip() for line in text.split("\n"))


@pytest.fixture(scope="module", params=list(tasks.TASKS))
def task(request):
  return request.param


@pytest.fixture(scope="module")
def held_out(task):
  return {split: tasks.load_task(task, split) for split in ("val", "test")}


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


def test_held_out_functions_occur_in_no_pretraining_document(task, held_out, pretraining_text):
  for split, records in held_out.items():
    for record in records:
      # The function's source as the prompt shows it (for pyfunc_names, with the name put back).
      shown = record.prompt.removesuffix(tasks.TASKS[task].suffix)
      source = shown.replace(tasks.MASK, record.completion) if task == "pyfunc_names" else shown
      assert _lines_stripped(source) not in pretraining_text, (split, source)


def test_val_and_test_are_non_empty_disjoint_and_unseen_in_the_tasks_train_split(task, held_out):
  val, test = ({(r.prompt, r.completion) for r in held_out[s]} for s in ("val", "test"))
  assert len(val) > 100 and len(test) > 100
  assert not val & test
  # Identical prompts may differ in name (`def ___(self): pass`), but no example is in train.
  assert not {(r.prompt, r.completion) for r in tasks.load_task(task, "train")} & (val | test)


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


def call_from_signature(header: str) -> str:
  """The call with the required arguments, from `inspect.signature` of the function itself
  (defined from its header with a `pass` body): an independent reading of the same header."""
  import inspect
  namespace = {}
  exec(header.strip() + "\n  pass\n", namespace)  # noqa: S102 (stdlib headers from this Python)
  function = next(v for k, v in namespace.items() if k != "__builtins__")
  params = list(inspect.signature(function).parameters.values())
  if params and params[0].name in ("self", "cls"):
    params = params[1:]
  required = [p.name if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else
              f"{p.name}={p.name}" for p in params
              if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  return f"{function.__name__}({', '.join(required)})"


def params_from_signature(header: str) -> str:
  import inspect
  namespace = {}
  exec(header.strip() + "\n  pass\n", namespace)  # noqa: S102
  function = next(v for k, v in namespace.items() if k != "__builtins__")
  prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
  return ", ".join(prefix.get(p.kind, "") + p.name
                   for p in inspect.signature(function).parameters.values())


@pytest.mark.parametrize("name, reference", [("pyfunc_params", params_from_signature),
                                             ("pyfunc_call", call_from_signature)])
def test_answers_match_inspect_signature(name, reference):
  """Every test answer equals what `inspect.signature` says of the header in the prompt, where the
  header can be executed alone (annotations or defaults naming other modules' objects cannot)."""
  checked = 0
  for record in tasks.load_task(name, "test") + tasks.load_task(name, "val"):
    header = record.prompt.removesuffix(tasks.TASKS[name].suffix)
    if header.lstrip().startswith("async "):
      header = header.replace("async ", "", 1)
    try:
      expected = reference(header)
    except Exception:  # noqa: BLE001 (a default or annotation that needs its module)
      continue
    assert record.completion == expected, header
    checked += 1
  assert checked > 100
