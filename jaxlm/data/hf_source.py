"""Hugging Face `datasets` corpora (data.source=hf): a hub name or a local path, streamed.

A local directory written by `Dataset.save_to_disk` is opened with `load_from_disk` (memory-mapped
Arrow); anything else (a hub name, a directory of parquet/json/arrow files) with
`load_dataset(..., streaming=True)`, so a corpus is read row by row and never held whole.
Validation is the dataset's validation (or test) split; without one, each train row whose index
hashes below data.val_fraction (a fixed, stable choice; a stream has no known end to cut).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from jaxlm.data.splits import hash_fraction
from jaxlm.errors import UserError

_VAL_SPLITS = ("validation", "test")
_VAL_SALT = "jaxlm/hf-val/v1:"


def _import_datasets() -> Any:
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("data.source=hf needs Hugging Face datasets; pip install datasets") from None
  return datasets


@dataclasses.dataclass(frozen=True)
class HFDocuments:
  """The `text_field` of the rows of one split, streamed afresh each time it is iterated;
  `holdout` True keeps the hash-chosen validation rows, False the others, None all."""
  rows: Any
  text_field: str
  name: str
  holdout: bool | None = None
  fraction: float = 0.0  # the validation share of the hash-chosen holdout

  def __iter__(self) -> Iterator[str]:
    for index, row in enumerate(self.rows):
      if self.holdout is not None and (hash_fraction(_VAL_SALT + str(index)) < self.fraction) \
          != self.holdout:
        continue
      text = row.get(self.text_field) if isinstance(row, dict) else None
      if not isinstance(text, str):
        raise UserError(f"Hugging Face dataset {self.name!r} row {index} has no string field "
                        f"{self.text_field!r} (fields: {sorted(row)}); set "
                        "--config.data.text_field")
      yield text


def _open(datasets: Any, path: str) -> Any:
  saved = os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in
                                      ("dataset_dict.json", "state.json"))
  try:
    if saved:
      return datasets.load_from_disk(path)
    return datasets.load_dataset(path, streaming=True)
  except FileNotFoundError as e:
    raise UserError(f"Hugging Face dataset {path!r} not found ({e}); give a hub name or a local "
                    "directory") from None


def load_hf(path: str, text_field: str, val_fraction: float) -> tuple[HFDocuments, HFDocuments]:
  """Raw (train, val) documents of the dataset `path` (see the module docstring)."""
  if not path:
    raise UserError("data.source=hf needs a dataset in data.path: a hub name or a local directory")
  splits = _open(_import_datasets(), path)
  if not hasattr(splits, "keys"):  # one split saved alone
    splits = {"train": splits}
  if "train" not in splits:
    raise UserError(f"Hugging Face dataset {path!r} has no train split (splits: "
                    f"{sorted(splits.keys())}); give a dataset with one")
  val_name = next((s for s in _VAL_SPLITS if s in splits), None)
  if val_name is not None:
    return (HFDocuments(splits["train"], text_field, path),
            HFDocuments(splits[val_name], text_field, path))
  return (HFDocuments(splits["train"], text_field, path, False, val_fraction),
          HFDocuments(splits["train"], text_field, path, True, val_fraction))
