"""Host time per generated token of the server's detokenisation, interleaved: decoding the whole
output after each token (jaxlm's TextStream until 2026-12-06) against `IncrementalText` (a window
of the last tokens), for each tokenizer kind trained on the built-in corpus.

    python tools/detok_bench.py [--tokens=256,1024,4096] [--kinds=gpt2_bpe,sentencepiece,wordpiece,byte]

The ids are real text (the first stdlib files) tokenized, as a model's output would be; both ways
are checked to give the same text before timing. Last line: JSON.
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_model  # noqa: E402

from jaxlm.data.stdlib_source import read_stdlib  # noqa: E402
from jaxlm.data.tokenizer import train_tokenizer  # noqa: E402
from jaxlm.serving.text import IncrementalText  # noqa: E402


def whole(tokenizer, ids: list[int]) -> str:
  text = ""
  for n in range(1, len(ids) + 1):
    text = tokenizer.decode(ids[:n])
  return text


def windowed(tokenizer, ids: list[int]) -> str:
  text = IncrementalText(tokenizer)
  for n in range(1, len(ids) + 1):
    text.update(ids[:n])
  return text.text


def per_token_us(fn, tokenizer, ids: list[int]) -> float:
  start = time.perf_counter()
  fn(tokenizer, ids)
  return (time.perf_counter() - start) / len(ids) * 1e6


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", default="256,1024,4096")
  parser.add_argument("--kinds", default="gpt2_bpe,sentencepiece,wordpiece,byte")
  parser.add_argument("--vocab_size", type=int, default=2048)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  lengths = [int(n) for n in args.tokens.split(",")]
  texts = read_stdlib(False)[1][:60]
  rows = []
  for kind in args.kinds.split(","):
    tokenizer = train_tokenizer(kind, texts, args.vocab_size)
    ids = tokenizer.encode("\n".join(texts))[:max(lengths)]
    for n in lengths:
      assert whole(tokenizer, ids[:n]) == windowed(tokenizer, ids[:n])
      times = {"whole": [], "windowed": []}
      for _ in range(args.rounds):  # interleaved, so drift hits both alike
        for name, fn in (("whole", whole), ("windowed", windowed)):
          times[name].append(per_token_us(fn, tokenizer, ids[:n]))
      row = {"kind": kind, "tokens": n, **{f"{k}_us": round(min(v), 1) for k, v in times.items()}}
      rows.append(row)
      print(f"{kind:<14} {n:>6} tokens: whole {row['whole_us']:>8.1f} us/token, windowed "
            f"{row['windowed_us']:>6.1f} us/token", flush=True)
  print(json.dumps({"cpu": cpu_model(), "date": datetime.date.today().isoformat(), "rows": rows}))


if __name__ == "__main__":
  main()
