"""Prepare a corpus once into token shards that training streams (`data.source=prepared`).

    python -m jaxlm.prepare --config=configs/default.py --out=DIR [--workers=N] [--shard_mb=64]
    python -m jaxlm.train --config=configs/default.py --config.data.source=prepared \
        --config.data.path=DIR --workdir=W

Reads the config's data.* sources and cleans and splits them as `train` does, trains the tokenizer
on a bounded sample (data.tokenizer_sample_chars; with an encdec config, model.family=encdec,
a sentencepiece one gets data.num_sentinels sentinels for span corruption, as a training run on the
raw text would) or takes data.tokenizer_file, tokenises in worker processes and writes DIR (see
jaxlm/data/manifest.py). Interrupted, the same command resumes: finished shards are kept. The last line of stdout is a JSON summary.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.data.dataset import DataConfig
from jaxlm.data.prepare import prepare
from jaxlm.errors import UserError


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "configs/default.py", "Config whose data.* to prepare.")
  flags.DEFINE_string("out", None, "Directory for the prepared data (new, or one to resume).")
  flags.DEFINE_integer("workers", min(os.cpu_count() or 1, 16),
                       "Tokeniser processes (1: tokenise in this process).")
  flags.DEFINE_float("shard_mb", 64.0, "About this many million characters of text per shard.")


def main(argv):
  del argv
  f = flags.FLAGS

  def run():
    if not f.out:
      raise UserError("--out is required: the directory for the prepared data")
    manifest = prepare(DataConfig.from_config(f.config.data), f.out, max(f.workers, 1),
                       int(f.shard_mb * 1e6), lambda text: print(text, file=sys.stderr),
                       encdec=f.config.model.family == "encdec")
    cli.emit_json({"out": f.out, **{f"{split}_{key}": entry[key]
                                    for split, entry in manifest["splits"].items()
                                    for key in ("docs", "tokens")},
                   "shards": sum(len(e["shards"]) for e in manifest["splits"].values())})

  cli.run(run, multihost=False)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
