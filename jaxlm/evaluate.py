"""Evaluate a trained run: language-model metrics on its validation split, or a task's metrics.

    python -m jaxlm.evaluate --workdir=DIR [--step=N] [--config.eval.max_batches=0] [--config.data.path=...]
    python -m jaxlm.evaluate --workdir=DIR --task=pyfunc_params|PATH.jsonl [--max_new_tokens=N] [--stop='\n']

Without --task, on the run's validation split (all of it, unless eval.max_batches limits it):
- a GPT: loss, perplexity = exp(mean token NLL) over every validation token, bits per byte = NLL in
  bits / UTF-8 bytes of the text those tokens cover, and token accuracy;
- a BERT pretrained by masked LM: loss, perplexity and accuracy of the masked tokens, under a fixed
  masking (the same numbers every time);
- a classification run: accuracy and macro-F1 (predictions and a confusion table under
  WORKDIR/predictions/); a tagging run: entity-level precision, recall and F1 (seqeval's rules). With --task: completion perplexity, exact match, BLEU and ROUGE-L
on the task's test records (see generation.py), predictions saved under WORKDIR/predictions/. Either
way the last line of stdout is one JSON object with the metrics.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.config import base_config
from jaxlm.data.dataset import DataConfig, pack_any, read_corpus
from jaxlm.eval import generation, label_eval, summary
from jaxlm.data.prepared_data import open_sources
from jaxlm.errors import UserError
from jaxlm.inference.beam import BeamConfig, check_beam_config
from jaxlm.eval.scoring import evaluate_sets
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
  flags.DEFINE_integer("beam_size", 1, "With --task: beam search with this many beams (1 = "
                       "greedy), scored as transformers' generate(num_beams=...).")
  flags.DEFINE_float("length_penalty", 1.0, "With --task and --beam_size > 1: a hypothesis "
                     "scores sum_logprobs / length ** length_penalty.")
  flags.DEFINE_string("bleu_tokenize", "", "With --task: sacrebleu tokenization ('13a' words, "
                      "'char', ...); default: the built-in task's own, else '13a'.")


def evaluate(workdir: str, step: int | None, overrides: dict) -> dict[str, float]:
  run = trained.load(workdir, step, overrides)
  data_cfg = DataConfig.from_config(run.config.data)
  labels = tuple(run.config.data.labels)
  if data_cfg.source == "prepared":  # every source's own validation split, and all together
    sources = open_sources(data_cfg)
    if sources.tokenizer.to_json() != run.tokenizer.to_json():
      raise UserError(f"{sources.opened[0].directory} was prepared with another tokenizer than "
                      f"the run in {workdir}; evaluate on data prepared with its tokenizer")
    sets = sources.val_sets()
  else:
    records = read_corpus(data_cfg).val
    val, bytes_per_token = pack_any(data_cfg, records, run.tokenizer, "val", labels,
                                    run.target_tokenizer)
    sets = [("", val, bytes_per_token)]
  cfg = run.model_cfg
  metrics = summary.select_sets(evaluate_sets(run.engine, run.params, sets,
                                              run.config.eval.batch_size,
                                              run.config.eval.max_batches), cfg.family, cfg.head)
  print(f"step {run.step}: validation {summary.describe(metrics)}")
  if cfg.head in ("classify", "tag"):
    metrics.update(label_metrics(run, workdir, val, records, labels))
  return {"step": run.step, **metrics}


def label_metrics(run, workdir: str, val, records, labels: tuple[str, ...]) -> dict:
  """Accuracy / macro-F1 or entity precision / recall / F1 of the validation records, written with
  one prediction per example under WORKDIR/predictions/."""
  predicted = label_eval.predict_rows(run.engine, run.params, val, run.config.eval.batch_size)
  per_example = label_eval.per_example(val, predicted, len(records))
  report = (label_eval.classification_report if run.model_cfg.head == "classify"
            else label_eval.tagging_report)
  metrics, rows, table = report(records, per_example, labels)
  path = label_eval.write_report(workdir, f"val_step{run.step}", metrics, rows, table)
  if table:
    print(table)
  print("  ".join(f"{key.replace('_', ' ')} {value:.4f}" for key, value in metrics.items()
                  if isinstance(value, float)) + f"  over {len(records)} examples; "
        f"predictions in {path}")
  return metrics


def evaluate_on_task(workdir: str, step: int | None, overrides: dict, task: str,
                     max_new_tokens: int | None, stop: str, bleu_tokenize: str,
                     beam_size: int = 1, length_penalty: float = 1.0) -> dict:
  trained.check_generative(workdir, step)
  check_beam_config(BeamConfig(beam_size, max_new_tokens or 1, length_penalty))
  run = trained.load(workdir, step, overrides)
  max_new_tokens = max_new_tokens or generation.default_max_new_tokens(task)
  metrics, rows = generation.evaluate_task(run, task, max_new_tokens, stop,
                                          run.config.eval.batch_size, bleu_tokenize, beam_size,
                                          length_penalty)
  path = generation.write_predictions(workdir, metrics, rows)
  print(f"{metrics['task']} at step {run.step}: exact match {metrics['exact_match']:.3f}  BLEU "
        f"{metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  ROUGE-L {metrics['rougeL']:.3f}  "
        "completion perplexity "
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
                              f.bleu_tokenize, f.beam_size, f.length_penalty)
    return evaluate(workdir, f.step, overrides)

  cli.run(lambda: cli.emit_json(run()))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
