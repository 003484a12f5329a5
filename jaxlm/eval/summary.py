"""Which token-level metrics mean something for a run's objective, and their one-line summary.

`scoring.evaluate_split` sums the same quantities for every objective (the NLL of the weighted
targets, how many there are and how many the argmax predicts). What they are differs:
  causal LM   every next token: loss, perplexity, bits per byte, token accuracy
  masked LM   the masked tokens (a fixed masking, the same every evaluation): loss, perplexity
              and accuracy of the masked tokens; bits per byte has no meaning (most text is seen)
  labels      one target per sequence ([CLS]) or per word: loss and accuracy of the labels
  seq2seq     an encoder-decoder's target tokens (the corrupted spans and their sentinels in
              span-corruption pretraining, under a fixed corruption; a translation's target
              text): loss, perplexity and accuracy given the source; no bits per byte (the source
              is seen)
"""

KEEP = {"causal": ("loss", "perplexity", "bits_per_byte", "token_accuracy", "tokens"),
        "masked": ("loss", "perplexity", "token_accuracy", "tokens"),
        "labels": ("loss", "token_accuracy", "tokens"),
        "seq2seq": ("loss", "perplexity", "token_accuracy", "tokens")}
NAMES = {"masked": {"token_accuracy": "masked_accuracy", "tokens": "masked_tokens"},
         "labels": {"token_accuracy": "accuracy", "tokens": "labelled"},
         "seq2seq": {"token_accuracy": "target_accuracy", "tokens": "target_tokens"}}
COUNTS = ("tokens", "masked_tokens", "labelled", "target_tokens")


def objective_kind(family: str, head: str) -> str:
  """"causal", "masked", "labels" or "seq2seq" for a model family and head."""
  if head != "lm":
    return "labels"
  if family == "encdec":
    return "seq2seq"
  return "masked" if family == "bert" else "causal"


def select(metrics: dict, family: str, head: str) -> dict:
  """The metrics that mean something for the objective, under names that say what they count."""
  kind = objective_kind(family, head)
  names = NAMES.get(kind, {})
  return {names.get(key, key): metrics[key] for key in KEEP[kind] if key in metrics}


def describe(metrics: dict) -> str:
  """`loss 2.1234  perplexity 8.371 ...` over the metrics `select` returned."""
  parts = []
  for key, value in metrics.items():
    source, _, name = key.rpartition("/")  # "web/loss": a mixture source's
    prefix = f"{source}: " if source else ""
    if name in COUNTS:
      what = "tokens" if name == "tokens" else name.replace("_", " ")
      parts.append(f"{prefix}over {value:,} {what}")
    else:
      parts.append(f"{prefix}{name.replace('_', ' ')} {value:.4f}")
  return "  ".join(parts)


def select_sets(results: dict[str, dict], family: str, head: str) -> dict:
  """`select` of the overall metrics (name ""), then each named set's as "name/metric"."""
  out = select(results[""], family, head)
  for name, metrics in results.items():
    if name:
      out.update({f"{name}/{key}": value for key, value in select(metrics, family, head).items()})
  return out
