"""The built-in corpus: the running Python's standard library source files."""

from __future__ import annotations

import os
import sysconfig

from jaxlm.data.splits import hash_fraction, split_by_hash

# Files reserved for the held-out (validation and test) splits of built-in tasks (tasks.py): a
# salted hash of the relative path below a fixed share of hash space. It depends on neither
# data.val_fraction nor which other files exist, and the salt makes it independent of the
# corpus's own train/val split. Pretraining never reads these files, so a task's held-out examples
# are unseen whatever data.val_fraction or data.dedup a pretraining run used.
TASK_HELD_OUT_SALT = "jaxlm/task-held-out/v1:"
TASK_HELD_OUT_SHARE = 0.05

# Third-party packages are not the standard library; test suites are mostly
# repetitive boilerplate and would dominate the corpus.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "idle_test", "__pycache__"})


def _is_excluded(name: str) -> bool:
  return name in _EXCLUDED_DIRS or name.startswith("test")


def stdlib_files(root: str) -> list[str]:
  """Relative paths (with "/") of the .py files under `root`, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Pruning in place stops os.walk from descending into excluded dirs.
    dirnames[:] = [d for d in dirnames if not _is_excluded(d)]
    rel_dir = os.path.relpath(dirpath, root)
    for name in filenames:
      if name.endswith(".py") and not _is_excluded(name):
        found.append(os.path.normpath(os.path.join(rel_dir, name)).replace(os.sep, "/"))
  return sorted(found)


def read_if_utf8(path: str) -> str | None:
  # A few stdlib files are deliberately Latin-1 (encoding tests); they are
  # not user input, so they are skipped rather than reported.
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return None


def is_task_held_out(rel_path: str) -> bool:
  """True for the stdlib files (relative paths, as `stdlib_files` gives them) that only built-in
  tasks' held-out splits may use."""
  return hash_fraction(TASK_HELD_OUT_SALT + rel_path) < TASK_HELD_OUT_SHARE


def read_stdlib(task_held_out: bool) -> tuple[list[str], list[str]]:
  """(relative paths, texts) of the UTF-8 stdlib files reserved for tasks' held-out splits
  (`task_held_out`), or of all the others: those that pretraining and tasks' train splits use."""
  root = sysconfig.get_paths()["stdlib"]
  rel_paths, texts = [], []
  for rel in stdlib_files(root):
    if is_task_held_out(rel) != task_held_out:
      continue
    text = read_if_utf8(os.path.join(root, rel))
    if text is not None:
      rel_paths.append(rel)
      texts.append(text)
  return rel_paths, texts


def load_stdlib(val_fraction: float) -> tuple[list[str], list[str]]:
  """Returns raw (train, val) documents, one per stdlib file, split by a
  stable hash of the relative path; the files reserved for tasks are in neither."""
  rel_paths, texts = read_stdlib(task_held_out=False)
  train_idx, val_idx = split_by_hash(rel_paths, val_fraction)
  return [texts[i] for i in train_idx], [texts[i] for i in val_idx]
