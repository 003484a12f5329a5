"""Sources beyond .txt/.jsonl: .jsonl.gz and .parquet files in a glob, and Hugging Face datasets
from a local directory (parquet files, or a `save_to_disk` dataset), made here: nothing is
downloaded."""

import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before `datasets` is imported anywhere
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from test_prepare import SHARD_CHARS  # noqa: E402
from test_train import tiny_config  # noqa: E402

from jaxlm.data.dataset import DataConfig  # noqa: E402
from jaxlm.data.prepare import prepare  # noqa: E402
from jaxlm.data.sources import load_corpus  # noqa: E402
from jaxlm.data.splits import hash_fraction  # noqa: E402
from jaxlm.errors import UserError  # noqa: E402

TEXTS = [f"document number {i}: " + "the cat sat on the mat. " * (i % 5 + 1) for i in range(40)]


def write_parquet(path, texts, field="text"):
  pq.write_table(pa.table({field: texts, "id": list(range(len(texts)))}), path)


def test_a_directory_or_glob_of_jsonl_gz_and_parquet_files_reads_every_record(tmp_path):
  with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in TEXTS[:20])
  write_parquet(tmp_path / "b.parquet", TEXTS[20:])
  (tmp_path / "ignored.csv").write_text("not,text\n")  # a directory reads only known suffixes
  corpus = load_corpus("files", str(tmp_path), "text", 0.5, False)
  globbed = load_corpus("files", str(tmp_path / "*.[jp]*"), "text", 0.5, False)
  assert (globbed.train, globbed.val) == (corpus.train, corpus.val)
  # Two files split by the hash of their names: one is train, the other validation.
  assert sorted([*corpus.train, *corpus.val]) == sorted(TEXTS)
  assert {tuple(corpus.train), tuple(corpus.val)} == {tuple(TEXTS[:20]), tuple(TEXTS[20:])}
  single = load_corpus("files", str(tmp_path / "b.parquet"), "text", 0.25, False)
  assert single.train == TEXTS[20:35] and single.val == TEXTS[35:]  # the last quarter of rows


def test_a_parquet_file_without_the_text_column_is_a_one_line_error(tmp_path):
  write_parquet(tmp_path / "b.parquet", TEXTS, field="body")
  with pytest.raises(UserError, match="no column 'text'.*set --config.data.text_field"):
    load_corpus("files", str(tmp_path / "b.parquet"), "text", 0.25, False)


def test_a_local_hugging_face_dataset_of_parquet_files_is_streamed_and_split_by_hash(tmp_path):
  os.makedirs(tmp_path / "data")
  write_parquet(tmp_path / "data" / "train-00000.parquet", TEXTS)
  corpus = load_corpus("hf", str(tmp_path), "text", 0.25, False)
  expected_val = [t for i, t in enumerate(TEXTS) if hash_fraction(f"jaxlm/hf-val/v1:{i}") < 0.25]
  assert corpus.val == expected_val and 0 < len(expected_val) < len(TEXTS)
  assert corpus.train == [t for t in TEXTS if t not in expected_val]


def test_a_saved_hugging_face_dataset_uses_its_validation_split_and_prepares(tmp_path):
  import datasets  # noqa: PLC0415
  datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"text": TEXTS[:30]}),
      "validation": datasets.Dataset.from_dict({"text": TEXTS[30:]}),
  }).save_to_disk(str(tmp_path / "saved"))
  corpus = load_corpus("hf", str(tmp_path / "saved"), "text", 0.1, False)
  assert corpus.train == TEXTS[:30] and corpus.val == TEXTS[30:]
  c = tiny_config("")
  c.data.source, c.data.path = "hf", str(tmp_path / "saved")
  manifest = prepare(DataConfig.from_config(c.data), str(tmp_path / "p"), 1, SHARD_CHARS,
                     lambda _: None)
  assert (manifest["splits"]["train"]["docs"], manifest["splits"]["val"]["docs"]) == (30, 10)
  with pytest.raises(UserError, match="no string field 'body'"):
    load_corpus("hf", str(tmp_path / "saved"), "body", 0.1, False)
