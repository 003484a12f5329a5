"""Evaluate a trained run on its validation split: loss, perplexity, bits per byte, token accuracy.

    python -m jaxlm.evaluate --workdir=DIR [--step=N] [--config.eval.max_batches=0] [--config.data.path=...]

Perplexity is exp(mean token NLL) over every validation token (all windows, unless
eval.max_batches limits it). Bits per byte = NLL in bits / UTF-8 bytes of the text those tokens
cover. The last line of stdout is one JSON object with the metrics.
"""

import math

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli, sharding, trained
from jaxlm.config import base_config
from jaxlm.corpus import DataConfig, pack_split, read_corpus
from jaxlm.data import PackedTokens, eval_batches
from jaxlm.engine import Engine



def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "Overrides of the run's config (eval.*, data.*, mesh.*).")
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")


def evaluate_split(engine: Engine, params, packed: PackedTokens, batch_size: int,
                   max_batches: int, bytes_per_token: float) -> dict[str, float]:
  """Metrics over `packed` (all of it when max_batches is 0), summed on device, read once."""
  batch_spec = engine.batch_sharding()
  local_batch = batch_size // jax.process_count()
  totals = None
  for rows in eval_batches(packed, local_batch, jax.process_index(), jax.process_count(),
                           max_batches or None):
    sums = engine.eval_step(params, sharding.global_batch(rows, batch_spec))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  totals = jax.tree.map(float, jax.device_get(totals))
  tokens = totals["weight_sum"]
  loss = totals["nll_sum"] / tokens
  return {
      "loss": loss,
      "perplexity": math.exp(loss),
      "bits_per_byte": loss / math.log(2) / bytes_per_token,
      "token_accuracy": totals["correct_sum"] / tokens,
      "tokens": int(tokens),
  }


def evaluate(workdir: str, step: int | None, overrides: dict) -> dict[str, float]:
  run = trained.load(workdir, step, overrides)
  data_cfg = DataConfig.from_config(run.config.data)
  val, bytes_per_token = pack_split(read_corpus(data_cfg).val, run.tokenizer, data_cfg.seq_len)
  metrics = evaluate_split(run.engine, run.params, val, run.config.eval.batch_size,
                           run.config.eval.max_batches, bytes_per_token)
  print(f"step {run.step}: validation loss {metrics['loss']:.4f}  perplexity "
        f"{metrics['perplexity']:.3f}  bits/byte {metrics['bits_per_byte']:.4f}  token accuracy "
        f"{metrics['token_accuracy']:.4f}  over {metrics['tokens']} tokens")
  return {"step": run.step, **metrics}


def main(argv):
  del argv
  f = flags.FLAGS
  cli.run(lambda: cli.emit_json(evaluate(cli.require_workdir(f.workdir), f.step,
                                         f["config"].override_values)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
