"""Evaluate a trained run: language-model metrics on its validation split, or a task's metrics.

    python -m jaxlm.evaluate --workdir=DIR [--step=N] [--config.eval.max_batches=0] [--config.data.path=...]
    python -m jaxlm.evaluate --workdir=DIR --task=pyfunc_params|PATH.jsonl [--max_new_tokens=N] [--stop='\n']

Without --task: loss, perplexity = exp(mean token NLL) over every validation token (all windows,
unless eval.max_batches limits it), bits per byte = NLL in bits / UTF-8 bytes of the text those
tokens cover, and token accuracy. With --task: completion perplexity, exact match, BLEU and ROUGE-L
on the task's test records (see generation.py), predictions saved under WORKDIR/predictions/. Either
way the last line of stdout is one JSON object with the metrics.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.config import base_config
from jaxlm.data.dataset import DataConfig, pack_any, read_corpus
from jaxlm.eval import generation
from jaxlm.eval.scoring import evaluate_split
from jaxlm.inference import trained


def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "Overrides of the run's config (eval.*, data.*, mesh.*).")
  flags.DEFINE_string("workdir", None, "The training run's directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_string("task", None, "A built-in task's name or a prompt/completion JSONL file: "
                      "evaluate generation on it instead of the validation split.")
  flags.DEFINE_integer("max_new_tokens", None, "With --task: the longest completion generated "
                       "(default: the built-in task's own, else 32).")
  flags.DEFINE_string("stop", "\n", "With --task: a completion ends before this string (or at EOS).")
  flags.DEFINE_string("bleu_tokenize", "", "With --task: sacrebleu tokenization ('13a' words, "
                      "'char', ...); default: the built-in task's own, else '13a'.")


def evaluate(workdir: str, step: int | None, overrides: dict) -> dict[str, float]:
  run = trained.load(workdir, step, overrides)
  data_cfg = DataConfig.from_config(run.config.data)
  val, bytes_per_token = pack_any(data_cfg, read_corpus(data_cfg).val, run.tokenizer, "val")
  metrics = evaluate_split(run.engine, run.params, val, run.config.eval.batch_size,
                           run.config.eval.max_batches, bytes_per_token)
  print(f"step {run.step}: validation loss {metrics['loss']:.4f}  perplexity "
        f"{metrics['perplexity']:.3f}  bits/byte {metrics['bits_per_byte']:.4f}  token accuracy "
        f"{metrics['token_accuracy']:.4f}  over {metrics['tokens']} tokens")
  return {"step": run.step, **metrics}


def evaluate_on_task(workdir: str, step: int | None, overrides: dict, task: str,
                     max_new_tokens: int | None, stop: str, bleu_tokenize: str) -> dict:
  run = trained.load(workdir, step, overrides)
  max_new_tokens = max_new_tokens or generation.default_max_new_tokens(task)
  metrics, rows = generation.evaluate_task(run, task, max_new_tokens, stop,
                                          run.config.eval.batch_size, bleu_tokenize)
  path = generation.write_predictions(workdir, metrics, rows)
  print(f"{metrics['task']} at step {run.step}: exact match {metrics['exact_match']:.3f}  BLEU "
        f"{metrics['bleu']:.2f}  ROUGE-L {metrics['rougeL']:.3f}  completion perplexity "
        f"{metrics['completion_perplexity']:.3f}  over {metrics['examples']} examples; "
        f"predictions in {path}")
  return metrics


def main(argv):
  del argv
  f = flags.FLAGS
  overrides = f["config"].override_values

  def run():
    workdir = cli.require_workdir(f.workdir)
    if f.task:
      return evaluate_on_task(workdir, f.step, overrides, f.task, f.max_new_tokens, f.stop,
                              f.bleu_tokenize)
    return evaluate(workdir, f.step, overrides)

  cli.run(lambda: cli.emit_json(run()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
