"""TensorFlow Datasets text corpora, read with `tfds.data_source`.

`tfds.data_source` reads ArrayRecord files with random access and works
without TensorFlow installed (unlike `tfds.load`, which builds a tf.data
pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxlm.data.splits import split_tail
from jaxlm.errors import UserError

_VAL_SPLITS = ("validation", "test")


def _import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(
      "data.source=tfds needs tensorflow-datasets; pip install tensorflow-datasets"
    ) from None
  return tfds


def _text_of(record: Any, text_field: str, name: str) -> str:
  value = record.get(text_field) if isinstance(record, dict) else None
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(
        f"TFDS dataset {name!r} field {text_field!r} is not valid UTF-8 (byte offset {e.start}); "
        "use a text field or dataset that is UTF-8"
      ) from None
  if isinstance(value, str):
    return value
  fields = sorted(record) if isinstance(record, dict) else []
  raise UserError(
    f"TFDS dataset {name!r} has no text field {text_field!r} (fields: {fields}); set --config.data.text_field"
  )


def _read_texts(source: Sequence[Any], text_field: str, name: str) -> list[str]:
  # One record at a time: batched `__getitems__` would be faster, but it is
  # broken under tfds.testing.mock_data (tfds 4.9.10), which the tests use.
  return [_text_of(source[i], text_field, name) for i in range(len(source))]


def _val_split_name(tfds: Any, name: str) -> str | None:
  """The first of validation/test that the dataset has, else None."""
  known = set(tfds.builder(name).info.splits.keys())
  if known:
    return next((s for s in _VAL_SPLITS if s in known), None)
  # No split metadata (e.g. under tfds.testing.mock_data): probe instead.
  for split in _VAL_SPLITS:
    try:
      tfds.data_source(name, split=split)
      return split
    except (KeyError, ValueError):
      continue
  return None


def load_tfds(name: str, text_field: str, val_fraction: float) -> tuple[list[str], list[str]]:
  """Returns raw (train, val) documents of TFDS dataset `name` ("name" or
  "name:version"). Validation is the dataset's validation (or test) split,
  else the last val_fraction of the train documents."""
  if not name:
    raise UserError(
      "data.source=tfds needs a dataset name in data.path, e.g. --config.data.path=tiny_shakespeare"
    )
  tfds = _import_tfds()
  try:
    train = _read_texts(tfds.data_source(name, split="train"), text_field, name)
    val_split = _val_split_name(tfds, name)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
      f"unknown TFDS dataset {name!r}; see https://www.tensorflow.org/datasets/catalog for names"
    ) from None
  if val_split is None:
    return split_tail(train, val_fraction)
  return train, _read_texts(tfds.data_source(name, split=val_split), text_field, name)
