"""The built-in corpus: the running Python's standard library source files."""

from __future__ import annotations

import os
import sysconfig

from jaxlm.data.splits import split_by_hash

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


def load_stdlib(val_fraction: float) -> tuple[list[str], list[str]]:
  """Returns raw (train, val) documents, one per stdlib file, split by a
  stable hash of the relative path."""
  root = sysconfig.get_paths()["stdlib"]
  rel_paths, texts = [], []
  for rel in stdlib_files(root):
    text = read_if_utf8(os.path.join(root, rel))
    if text is not None:
      rel_paths.append(rel)
      texts.append(text)
  train_idx, val_idx = split_by_hash(rel_paths, val_fraction)
  return [texts[i] for i in train_idx], [texts[i] for i in val_idx]
