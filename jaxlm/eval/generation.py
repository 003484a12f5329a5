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
Generation is greedy or beam search (`--beam_size`), batched, with the KV cache; it stops at EOS or
at the stop string. A GPT completes each prompt; an encoder-decoder reads it as the source (a
prompt/completion record as source/target) and generates the target, and its completion
perplexity is that of the target given the source.
"""

import json
import math
import os
from collections.abc import Callable

import jax
import sacrebleu
from rouge_score import rouge_scorer

from jaxlm.data.dataset import pack_record_split
from jaxlm.data.records import Record, read_records
from jaxlm.data.seq2seq import Pair, pack_pair_split, read_pairs
from jaxlm.data.tasks import TASKS, load_task
from jaxlm.data import translation_tasks
from jaxlm.data.translation_tasks import is_translation_task, load_seq2seq_task
from jaxlm.eval.scoring import evaluate_split
from jaxlm.inference.beam import BeamConfig
from jaxlm.inference.decode import SamplingConfig, beam_generate, generate
from jaxlm.inference.seq2seq import generate_seq2seq
from jaxlm.inference.seq2seq_beam import beam_seq2seq
from jaxlm.inference.trained import TrainedRun

# Prompts are padded up to a multiple of this many tokens, to bound the number of compilations.
LENGTH_MULTIPLE = 16


def is_builtin(task: str) -> bool:
  return task in TASKS or is_translation_task(task)


def task_records(task: str) -> tuple[str, list[Record]]:
  """(name, records): a built-in task's test split, or every record of a JSONL file."""
  if is_builtin(task):
    return task, load_task(task, "test")
  return os.path.splitext(os.path.basename(task))[0], read_records(task)


def task_pairs(task: str) -> tuple[str, list[Pair]]:
  """(name, source/target pairs) of the test split or file, for an encoder-decoder."""
  if is_builtin(task):
    return task, load_seq2seq_task(task, "test")
  return os.path.splitext(os.path.basename(task))[0], read_pairs(task)


def default_max_new_tokens(task: str) -> int:
  """The built-in task's generation budget, else 32 tokens."""
  if is_translation_task(task):
    return translation_tasks.MAX_NEW_TOKENS
  return TASKS[task].max_new_tokens if task in TASKS else 32


def bleu_tokenizer(task: str, requested: str) -> str:
  """The requested BLEU tokenization, else the built-in task's own, else "13a"."""
  if is_translation_task(task):
    return requested or translation_tasks.BLEU_TOKENIZE
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


def decoder_for(run: TrainedRun, max_new_tokens: int, beam_size: int,
                length_penalty: float) -> Callable[[list[list[int]]], list[list[int]]]:
  """Token ids of a batch of prompts (GPT) or sources (encdec) -> the new ids of each: greedy, or
  beam search's best hypothesis when beam_size > 1; they end at the (target) tokenizer's EOS."""
  cfg, eos_id, params = run.model_cfg, run.target_tokenizer.eos_id, run.params
  seq2seq = cfg.family == "encdec"
  if beam_size > 1:
    beam = BeamConfig(beam_size, max_new_tokens, length_penalty, eos_id=eos_id)
    search = beam_seq2seq if seq2seq else beam_generate
    return lambda batch: [hypotheses[0] for hypotheses in search(
        params, cfg, batch, beam, length_multiple=LENGTH_MULTIPLE)]
  sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
  decode = generate_seq2seq if seq2seq else generate
  return lambda batch: decode(params, cfg, batch, sampling, eos_id=eos_id,
                              length_multiple=LENGTH_MULTIPLE)


def encode_inputs(run: TrainedRun, texts: list[str], max_new_tokens: int) -> list[list[int]]:
  """A GPT's prompts after the start-of-document token, cut on the left to leave room for the
  completion; an encoder-decoder's sources + EOS (as training packs them), cut to its positions
  on the right."""
  tokenizer, cfg = run.tokenizer, run.model_cfg
  encoded = tokenizer.encode_batch(texts)
  if cfg.family == "encdec":
    return [ids[:cfg.max_len - 1] + [tokenizer.eos_id] for ids in encoded]
  room = cfg.max_len - max_new_tokens - 1
  return [[tokenizer.eos_id] + ids[max(0, len(ids) - room):] for ids in encoded]


def complete(run: TrainedRun, prompts: list[str], max_new_tokens: int, stop: str,
             batch_size: int, beam_size: int = 1, length_penalty: float = 1.0) -> list[str]:
  """The completion (GPT) or target (encdec) of each prompt or source, greedy or by beam; decoded
  by the target tokenizer (a separate vocabulary's, or the one shared)."""
  encoded = encode_inputs(run, prompts, max_new_tokens)
  decode = decoder_for(run, max_new_tokens, beam_size, length_penalty)
  order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths batch well
  completions = [""] * len(prompts)
  for start in range(0, len(order), batch_size):
    chosen = order[start:start + batch_size]
    batch = [encoded[i] for i in chosen]
    batch += [batch[-1]] * (batch_size - len(batch))  # a fixed batch shape: one compilation
    for i, ids in zip(chosen, decode(batch)):
      text = run.target_tokenizer.decode(ids)
      completions[i] = text.split(stop)[0] if stop else text
  return completions


def evaluate_task(run: TrainedRun, task: str, max_new_tokens: int, stop: str, batch_size: int,
                  bleu_tokenize: str = "", beam_size: int = 1,
                  length_penalty: float = 1.0) -> tuple[dict, list[dict]]:
  """(metrics, one prediction record per test example)."""
  data = run.config.data
  if run.model_cfg.family == "encdec":
    name, pairs = task_pairs(task)
    target_len = data.target_len or run.model_cfg.max_len
    packed, bytes_per_token = pack_pair_split(pairs, run.tokenizer, data.seq_len, target_len,
                                              "right", name, run.target_tokenizer)
    records = [Record(p.source, p.target) for p in pairs]
  else:
    name, records = task_records(task)
    packed, bytes_per_token = pack_record_split(records, run.tokenizer, data.seq_len, "left",
                                                name)
  nll = evaluate_split(run.engine, run.params, packed, batch_size, 0, bytes_per_token)
  references = [r.completion for r in records]
  predictions = complete(run, [r.prompt for r in records], max_new_tokens, stop, batch_size,
                         beam_size, length_penalty)
  metrics = {"task": name, "step": run.step,
             **score(predictions, references, bleu_tokenizer(task, bleu_tokenize)),
             "completion_perplexity": math.exp(nll["loss"]), "examples": len(records),
             "beam_size": beam_size}
  rows = [{"prompt": r.prompt, "reference": r.completion, "prediction": p,
           "exact": p.strip() == r.completion.strip()} for r, p in zip(records, predictions)]
  return metrics, rows


def write_predictions(workdir: str, metrics: dict, rows: list[dict]) -> str:
  """WORKDIR/predictions/TASK_stepN.jsonl (one line per example) and .json (the metrics); with
  beam search TASK_stepN_beamK.*, so greedy and beam results sit side by side."""
  if jax.process_index() != 0:
    return ""
  directory = os.path.join(workdir, "predictions")
  os.makedirs(directory, exist_ok=True)
  beam = f"_beam{metrics['beam_size']}" if metrics.get("beam_size", 1) > 1 else ""
  base = os.path.join(directory, f"{metrics['task']}_step{metrics['step']}{beam}")
  for path, text in ((base + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                     (base + ".json", json.dumps(metrics, indent=1) + "\n")):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)  # never a half-written file under the final name
  return base + ".jsonl"
