"""Task evaluation: how well a run completes the prompts of a prompt/completion test set.

Metrics, over all test records:
  completion_perplexity  exp(mean NLL of the reference completion tokens and their EOS, given the prompt)
  exact_match            share of greedy completions equal to the reference (whitespace-stripped), 0..1
  bleu                   corpus BLEU of completions vs references (sacrebleu), 0..100; tokenized by
                         words (sacrebleu's "13a") or, for one-word answers such as identifiers,
                         by characters ("char": word 4-grams would not exist)
  chrf                   corpus chrF of completions vs references (sacrebleu's defaults: character
                         6-grams, beta 2), 0..100; independent of the BLEU tokenization
  rougeL                 mean ROUGE-L F1 (rouge-score, with stemming), 0..1
Generation is greedy, batched, with the KV cache; it stops at EOS or at the stop string.
"""

import json
import math
import os

import jax
import sacrebleu
from rouge_score import rouge_scorer

from jaxlm.data.dataset import pack_record_split
from jaxlm.data.records import Record, read_records
from jaxlm.data.tasks import TASKS, load_task
from jaxlm.eval.scoring import evaluate_split
from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.inference.trained import TrainedRun

# Prompts are padded up to a multiple of this many tokens, to bound the number of compilations.
LENGTH_MULTIPLE = 16


def task_records(task: str) -> tuple[str, list[Record]]:
  """(name, records): a built-in task's test split, or every record of a JSONL file."""
  if task in TASKS:
    return task, load_task(task, "test")
  return os.path.splitext(os.path.basename(task))[0], read_records(task)


def default_max_new_tokens(task: str) -> int:
  """The built-in task's generation budget, else 32 tokens."""
  return TASKS[task].max_new_tokens if task in TASKS else 32


def bleu_tokenizer(task: str, requested: str) -> str:
  """The requested BLEU tokenization, else the built-in task's own, else "13a"."""
  return requested or (TASKS[task].bleu_tokenize if task in TASKS else "13a")


def score(predictions: list[str], references: list[str],
          bleu_tokenize: str = "13a") -> dict[str, float]:
  exact = [p.strip() == r.strip() for p, r in zip(predictions, references)]
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
  bleu = sacrebleu.corpus_bleu(predictions, [references], tokenize=bleu_tokenize).score
  chrf = sacrebleu.corpus_chrf(predictions, [references]).score
  return {"exact_match": sum(exact) / len(exact), "bleu": bleu, "chrf": chrf,
          "rougeL": sum(rouge) / len(rouge)}


def complete(run: TrainedRun, prompts: list[str], max_new_tokens: int, stop: str,
             batch_size: int) -> list[str]:
  """Greedy completion of each prompt; prompts too long for the context lose tokens on the left."""
  tokenizer, cfg = run.tokenizer, run.model_cfg
  room = cfg.max_len - max_new_tokens - 1
  encoded = [[tokenizer.eos_id] + ids[max(0, len(ids) - room):]
             for ids in tokenizer.encode_batch(prompts)]
  order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch well
  completions = [""] * len(prompts)
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
  for start in range(0, len(order), batch_size):
    chosen = order[start:start + batch_size]
    batch = [encoded[i] for i in chosen]
    batch += [batch[-1]] * (batch_size - len(batch))  # a fixed batch shape: one compilation
    outputs = generate(run.params, cfg, batch, sampling, eos_id=tokenizer.eos_id,
                       length_multiple=LENGTH_MULTIPLE)
    for i, ids in zip(chosen, outputs):
      text = tokenizer.decode(ids)
      completions[i] = text.split(stop)[0] if stop else text
  return completions


def evaluate_task(run: TrainedRun, task: str, max_new_tokens: int, stop: str, batch_size: int,
                  bleu_tokenize: str = "") -> tuple[dict, list[dict]]:
  """(metrics, one prediction record per test example)."""
  name, records = task_records(task)
  packed, bytes_per_token = pack_record_split(records, run.tokenizer, run.config.data.seq_len,
                                              "left", name)
  nll = evaluate_split(run.engine, run.params, packed, batch_size, 0, bytes_per_token)
  references = [r.completion for r in records]
  predictions = complete(run, [r.prompt for r in records], max_new_tokens, stop, batch_size)
  metrics = {"task": name, "step": run.step,
             **score(predictions, references, bleu_tokenizer(task, bleu_tokenize)),
             "completion_perplexity": math.exp(nll["loss"]), "examples": len(records)}
  rows = [{"prompt": r.prompt, "reference": r.completion, "prediction": p,
           "exact": p.strip() == r.completion.strip()} for r, p in zip(records, predictions)]
  return metrics, rows


def write_predictions(workdir: str, metrics: dict, rows: list[dict]) -> str:
  """WORKDIR/predictions/TASK_stepN.jsonl (one line per example) and .json (the metrics)."""
  if jax.process_index() != 0:
    return ""
  directory = os.path.join(workdir, "predictions")
  os.makedirs(directory, exist_ok=True)
  base = os.path.join(directory, f"{metrics['task']}_step{metrics['step']}")
  for path, text in ((base + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                     (base + ".json", json.dumps(metrics, indent=1) + "\n")):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)  # never a half-written file under the final name
  return base + ".jsonl"
