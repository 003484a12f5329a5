"""Bad prepared data and mixtures: one-line errors, exit status 2, nothing trained (the rows of
docs/errors.md's "Prepared data and mixtures" table)."""

import os
import shutil

import pytest
from test_cli import TINY, jaxlm
from test_errors import tree_hash, user_error
from test_mixture import write_other_corpus
from test_prepare import prepare_tiny
from test_train import write_corpus


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """DIR/a and DIR/b prepared with one tokenizer, DIR/own with its own; DIR/tiny.py."""
  root = tmp_path_factory.mktemp("prepared_errors")
  corpus = write_corpus(root / "corpus")
  (root / "tiny.py").write_text(TINY.format(path=corpus))
  prepare_tiny(corpus, root / "a")
  prepare_tiny(write_other_corpus(root / "other"), root / "b",
               tokenizer_file=str(root / "a" / "tokenizer.json"))
  prepare_tiny(write_other_corpus(root / "other"), root / "own")
  return root


def train_on(root, workdir, *args):
  """Trains the tiny config on prepared data (data.path cleared: the args set it or a mixture)."""
  return jaxlm("train", f"--config={root / 'tiny.py'}", f"--workdir={workdir}",
               "--config.data.source=prepared", "--config.data.path=", *args)


def mixture(*entries) -> str:
  return ("--config.data.mixture=(" + "".join(f"({n!r}, {d!r}, {w}), " for n, d, w in entries) +
          ")")


def damaged_copy(root, case: str, how) -> str:
  copy = root / case
  shutil.copytree(root / "a", copy)
  how(copy / "train" / "00001.tokens")
  return str(copy)


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 2)


@pytest.mark.parametrize("case, args, fragment", [
    ("Mixture source prepared with another tokenizer",
     lambda r: [mixture(("a", str(r / "a"), 0.5), ("own", str(r / "own"), 0.5))],
     "was prepared with another tokenizer"),
    ("Missing shard",
     lambda r: [f"--config.data.path={damaged_copy(r, 'missing', os.remove)}"], "is missing"),
    ("Truncated shard",
     lambda r: [f"--config.data.path={damaged_copy(r, 'truncated', truncate)}"],
     "its manifest gives"),
    ("Mixture weights that do not sum to a positive number",
     lambda r: [mixture(("a", str(r / "a"), 0.0), ("b", str(r / "b"), 0.0))],
     "do not sum to a positive number"),
    ("A mixture source named twice",
     lambda r: [mixture(("a", str(r / "a"), 0.5), ("a", str(r / "b"), 0.5))], "twice"),
    ("Prepared directory without a manifest",
     lambda r: [f"--config.data.path={r / 'corpus'}"], "has no manifest.json"),
])
def test_bad_prepared_data_trains_nothing(root, case, args, fragment):
  workdir = root / "run"
  result = train_on(root, workdir, *args(root))
  user_error(result, root, case, fragment)
  assert not workdir.exists()  # nothing trained, nothing left


def test_a_workdir_resumed_on_data_of_another_tokenizer_is_refused_untouched(root):
  workdir = root / "run_a"  # as a run on DIR/a leaves it (its checkpoints aside): a's tokenizer
  workdir.mkdir()
  shutil.copy(root / "a" / "tokenizer.json", workdir / "tokenizer.json")
  before = tree_hash(workdir)
  result = train_on(root, workdir, f"--config.data.path={root / 'own'}")
  user_error(result, root, "Resuming on data prepared with another tokenizer",
             "was prepared with another tokenizer than this workdir's", workdir=workdir)
  assert tree_hash(workdir) == before


def test_prepare_into_a_directory_of_other_data_or_settings_is_refused(root):
  config = f"--config={root / 'tiny.py'}"
  result = jaxlm("prepare", config, f"--out={root / 'corpus'}")
  user_error(result, root, "prepare into a directory that holds other files", "is not empty")
  before = tree_hash(root / "a")
  result = jaxlm("prepare", config, f"--out={root / 'a'}", "--config.data.val_fraction=0.3",
                 f"--shard_mb={1500 / 1e6}")
  user_error(result, root, "prepare again with other settings", "val_fraction: 0.2 -> 0.3")
  assert tree_hash(root / "a") == before
