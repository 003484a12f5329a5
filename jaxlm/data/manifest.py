"""A prepared directory's manifest, and opening the directory for training.

    DIR/settings.json   the data settings prepare ran with (written first: claims DIR)
    DIR/tokenizer.json  the tokenizer (save_tokenizer's JSON)
    DIR/train/, val/    the shards of each split (shards.py)
    DIR/manifest.json   written last: format, settings, the tokenizer's kind, size, sentinels
                        (span corruption's, 0 unless prepared with an encdec config) and SHA-256,
                        the token dtype, and per split its documents, tokens, UTF-8 bytes, the
                        SHA-256 of its cleaned text and each shard's counts and SHA-256s
The validation split is fixed here, once; training packs the streams into windows of its own
data.seq_len.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxlm.data.shards import ShardedTokens, sha256_file, token_dtype, write_atomic
from jaxlm.data.tokenizer import Tokenizer, load_tokenizer
from jaxlm.errors import UserError

FORMAT = "jaxlm-prepared/1"
MANIFEST, SETTINGS, TOKENIZER = "manifest.json", "settings.json", "tokenizer.json"
# The data options that decide a prepared directory's content.
SETTING_KEYS = ("source", "path", "text_field", "val_fraction", "dedup", "tokenizer", "vocab_size",
                "sp_model_type", "tokenizer_sample_chars", "tokenizer_file")
CLEANING = "NFC, newlines unified to \\n, blank documents dropped, exact duplicates if dedup"


def settings_of(c, num_sentinels: int = 0) -> dict:
  """The settings of DataConfig `c`; `num_sentinels`, those of an encdec config's new tokenizer,
  only where there are any (so that directories prepared before sentinels existed still match)."""
  sentinels = {"num_sentinels": num_sentinels} if num_sentinels else {}
  return {**{key: getattr(c, key) for key in SETTING_KEYS}, **sentinels, "cleaning": CLEANING}


def sentinels_of(tokenizer: Tokenizer) -> int:
  """How many span-corruption sentinels `tokenizer` holds (an encdec run's sentencepiece)."""
  return len(getattr(tokenizer, "sentinel_ids", ()) or ())


def _dump(value: dict) -> bytes:
  return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def claim(out: str, settings: dict) -> None:
  """Makes `out` a prepared directory of `settings`, or checks that it already is one."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; give a directory for the prepared data")
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, SETTINGS)
  if not os.path.exists(path):
    if os.listdir(out):
      raise UserError(f"--out {out} is not empty and holds no prepared data; give a new or "
                      "empty directory")
    write_atomic(path, _dump(settings))
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  differing = [f"{key}: {saved.get(key)!r} -> {value!r}" for key, value in settings.items()
               if saved.get(key) != value]
  if differing:
    raise UserError(f"{out} holds data prepared with other settings ({'; '.join(differing)}); "
                    "use a new --out or the original settings")


def write(out: str, settings: dict, tokenizer: Tokenizer, tokenizer_sha256: str,
          splits: dict) -> dict:
  manifest = {"format": FORMAT, "settings": settings,
              "tokenizer": {"file": TOKENIZER, "kind": tokenizer.kind,
                            "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                            "num_sentinels": sentinels_of(tokenizer), "sha256": tokenizer_sha256},
              "token_dtype": token_dtype(tokenizer.vocab_size).str, "splits": splits}
  write_atomic(os.path.join(out, MANIFEST), _dump(manifest))
  return manifest


def read(directory: str) -> dict:
  """The manifest of a finished prepared directory."""
  if not directory:
    raise UserError("data.source=prepared needs data.path: a directory written by "
                    "`python -m jaxlm.prepare --out=DIR`")
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise UserError(f"{directory} has no {MANIFEST}: not a prepared directory, or prepare did not "
                    f"finish; run `python -m jaxlm.prepare --config=... --out={directory}`")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({e}); rerun `python -m jaxlm.prepare` into a new "
                    "--out") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise UserError(f"{path} is not a {FORMAT} manifest; prepare the data again with this jaxlm")
  return manifest


@dataclasses.dataclass(frozen=True)
class Prepared:
  """An opened prepared directory: its tokenizer and its splits as windows of seq_len."""
  directory: str
  manifest: dict
  tokenizer: Tokenizer
  train: ShardedTokens
  val: ShardedTokens
  val_bytes_per_token: float  # UTF-8 bytes of the validation text per scored token


def open_prepared(directory: str, seq_len: int) -> Prepared:
  """Opens a prepared directory: its manifest, its tokenizer (checked against the manifest) and
  its shards, mapped (their sizes checked, their contents read only as windows are)."""
  manifest = read(directory)
  info = manifest["tokenizer"]
  tokenizer_path = os.path.join(directory, info["file"])
  if not os.path.isfile(tokenizer_path) or sha256_file(tokenizer_path) != info["sha256"]:
    raise UserError(f"{tokenizer_path} is not the tokenizer that {directory}/{MANIFEST} was "
                    "written with (missing, or another tokenizer's); rerun "
                    f"`python -m jaxlm.prepare` into a new --out")
  tokenizer = load_tokenizer(tokenizer_path)
  dtype = np.dtype(manifest["token_dtype"])
  splits = {name: ShardedTokens.open(directory, entry["shards"], dtype, seq_len,
                                     f"{directory} ({name} split)")
            for name, entry in manifest["splits"].items()}
  val = splits["val"]
  val_bytes_per_token = manifest["splits"]["val"]["bytes"] / max(val.num_targets, 1)
  return Prepared(directory, manifest, tokenizer, splits["train"], val, val_bytes_per_token)
