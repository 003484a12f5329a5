"""Bad seq2seq / span-corruption / translation-task input: one-line UserErrors, each looked up in
docs/errors.md's "Seq2seq data and span corruption" table (the contract of test_errors.py; the
family / format mismatch goes through the `train` CLI, the rest are raised by the functions that
check them, since the encdec model they run ahead of is not on this branch)."""

import json
import types

import pytest
from test_cli import TINY, jaxlm
from test_errors import documented, user_error

from jaxlm.data import translation_tasks as tt
from jaxlm.data.mo_file import read_mo
from jaxlm.data.seq2seq import pack_seq2seq, read_pairs
from jaxlm.errors import UserError
from jaxlm.training.span_corruption import SpanCorruption, span_corruption_for

SP = types.SimpleNamespace(kind="sentencepiece", sentinel_ids=tuple(range(100, 200)), eos_id=1)


def raised(case: str, call, root=None) -> None:
  with pytest.raises(UserError) as error:
    call()
  message = f"error: {error.value}"
  assert "\n" not in message and "; " in message
  documented(case, message.replace(str(root), "DIR") if root else message)


def test_span_corruption_errors():
  raised("no_sentinels", lambda: span_corruption_for(
      "text", 256, 0, 0.15, 3.0, types.SimpleNamespace(kind="char", eos_id=1)))
  raised("more_spans_than_sentinels", lambda: span_corruption_for(
      "text", 4096, 0, 0.15, 3.0, SP))
  raised("noise_density", lambda: span_corruption_for("text", 256, 0, 1.5, 3.0, SP))
  raised("mean_noise_span", lambda: span_corruption_for("text", 256, 0, 0.15, 0.5, SP))
  raised("target_len", lambda: SpanCorruption((5,), 1, -1))


def test_seq2seq_packing_errors(tmp_path):
  pairs = [([2] * 30, [3])]
  raised("nothing_fits", lambda: pack_seq2seq(pairs, 1, 8, 8, "drop", "train"))
  raised("bad_truncate", lambda: pack_seq2seq(pairs, 1, 8, 8, "middle"))
  raised("lengths_too_small", lambda: pack_seq2seq(pairs, 1, 8, 1, "left"))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  raised("no_records", lambda: read_pairs(str(empty)), tmp_path)
  bad = tmp_path / "pairs.jsonl"
  bad.write_text(json.dumps({"source": "a", "target": "b"}) + "\n" +
                 json.dumps({"source": "a", "target": 3}) + "\n")
  raised("record_without_fields", lambda: read_pairs(str(bad)), tmp_path)


def test_translation_task_errors(tmp_path, monkeypatch):
  monkeypatch.setattr(tt, "LOCALE_ROOTS", (str(tmp_path / "locale"),))
  tt._splits.cache_clear()
  raised("no_catalogs", lambda: tt.load_translation("gettext_en_de", "train"), tmp_path)
  bad = tmp_path / "bad.mo"
  bad.write_bytes(b"\0" * 40)
  raised("not_a_mo_file", lambda: read_mo(str(bad)), tmp_path)
  bad.write_bytes(bytes.fromhex("de120495") + b"\0\0\0\0" + b"\xff\0\0\0" + b"\x1c\0\0\0" * 3)
  raised("damaged_mo_file", lambda: read_mo(str(bad)), tmp_path)
  tt._splits.cache_clear()


def test_seq2seq_data_needs_an_encdec_model(tmp_path):
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"source": f"a{i}", "target": "b"}) + "\n" for i in range(9)))
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=str(data)))
  workdir = tmp_path / "run"
  result = jaxlm("train", f"--config={config}", f"--workdir={workdir}")
  user_error(result, tmp_path, "seq2seq_data_for_a_gpt",
             "data.format=seq2seq and model.family=gpt do not go together")
  assert not workdir.exists()
