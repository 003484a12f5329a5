"""Training objectives: a pure `prepare(batch, key) -> batch` before one weighted cross-entropy.

Every objective ends in the same loss over `targets` / `weights` (step.py); they differ only in
what the batch holds when the model sees it:
  causal LM (gpt "lm") and labels (bert "classify" / "tag"): the batch as the data made it;
  masked LM (bert "lm"): a share of the tokens is chosen, the model sees them masked or replaced,
    and the loss covers exactly the chosen ones (BERT's objective).
Random draws come from the key only, so the masks of a step are fixed by (seed, step, micro-batch)
and a resumed run draws those of an unbroken one. jax draws depend on the key and the global shape,
not on how the batch is sharded; with `jax_threefry_partitionable` (jax's default since 0.5) each
device draws its own shard without gathering. The flag changes the draws themselves, so a run and
its resumption keep the default.
"""

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import UserError
from jaxlm.models import ModelConfig

Batch = dict[str, jax.Array]
# Of the chosen tokens: below MASK_SHARE become [MASK], up to MASK_SHARE + RANDOM_SHARE a random
# token, the rest stay as they are (BERT's 80 / 10 / 10).
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


class Objective(Protocol):
  def prepare(self, batch: Batch, key: jax.Array) -> Batch:
    """The batch the model and the loss see; `key` is the only source of randomness."""


@dataclasses.dataclass(frozen=True)
class AsGiven:
  """The data's targets and weights as they are: next tokens (causal LM) or labels."""
  name: str

  def prepare(self, batch: Batch, key: jax.Array) -> Batch:
    del key  # nothing random
    return batch


CAUSAL_LM = AsGiven("causal_lm")
LABELS = AsGiven("labels")
SEQ2SEQ = AsGiven("seq2seq")  # encdec on seq2seq records: the data made the decoder targets


@dataclasses.dataclass(frozen=True, eq=False)
class SpecialTokens:
  """What masking needs from a tokenizer (the lead builds it from the WordPiece vocabulary):
  the [MASK] id, the ids never chosen nor drawn as replacements ([CLS], [SEP], [PAD], ...) and,
  for whole-word masking, `word_start`: bool [vocab], true for pieces that start a word."""
  mask_id: int
  special_ids: tuple[int, ...]
  word_start: np.ndarray | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedLM:
  """BERT's masked LM: each candidate (weight > 0, not special) is chosen with `probability`
  (with `word_start`: whole words, every piece of a chosen word); targets are the original
  inputs and the weights are the chosen positions; of the chosen inputs 80% become `mask_id`,
  10% a uniformly drawn non-special id and 10% stay."""
  mask_id: int
  special_ids: tuple[int, ...]
  vocab_size: int
  probability: float = 0.15
  word_start: np.ndarray | None = None

  def __post_init__(self):
    if not 0.0 < self.probability <= 1.0:
      raise UserError(f"train.mlm_probability={self.probability} is not in (0, 1]; BERT uses "
                      "0.15")
    if len(set(self.special_ids)) >= self.vocab_size:
      raise UserError("every token id is special, so masked LM has no token to choose; check "
                      "the tokenizer's special tokens")

  def prepare(self, batch: Batch, key: jax.Array) -> Batch:
    inputs = batch["inputs"]  # [batch, seq] int32
    choose_key, kind_key, random_key = jax.random.split(key, 3)
    special = self._is_special(inputs)  # [batch, seq] bool
    candidates = (batch["weights"] > 0) & ~special
    draws = jax.random.uniform(choose_key, inputs.shape)  # [batch, seq]
    if self.word_start is not None:
      draws = self._word_draws(draws, inputs, special, batch["segment_ids"])
    chosen = candidates & (draws < self.probability)
    kind = jax.random.uniform(kind_key, inputs.shape)  # [batch, seq]: mask / random / keep
    allowed = np.setdiff1d(np.arange(self.vocab_size), np.asarray(self.special_ids, np.int64))
    random_ids = jnp.asarray(allowed, jnp.int32)[
        jax.random.randint(random_key, inputs.shape, 0, len(allowed))]  # [batch, seq]
    replaced = jnp.where(kind < MASK_SHARE, jnp.int32(self.mask_id),
                         jnp.where(kind < MASK_SHARE + RANDOM_SHARE, random_ids, inputs))
    return {**batch, "inputs": jnp.where(chosen, replaced, inputs).astype(inputs.dtype),
            "targets": inputs, "weights": chosen.astype(jnp.float32)}

  def _is_special(self, inputs: jax.Array) -> jax.Array:
    if not self.special_ids:
      return jnp.zeros(inputs.shape, bool)
    return jnp.isin(inputs, jnp.asarray(self.special_ids, jnp.int32))

  def _word_draws(self, draws: jax.Array, inputs: jax.Array, special: jax.Array,
                  segment_ids: jax.Array) -> jax.Array:
    """Each piece takes the draw of the piece that starts its word, so a word is chosen whole.

    A word starts at a word-start piece, at a special token and after one (a special token is a
    word of its own), or where a document starts."""
    table = jnp.asarray(np.asarray(self.word_start, bool))  # [vocab]
    first = jnp.ones_like(special[:, :1])  # [batch, 1]
    new_document = jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    after_special = jnp.concatenate([first, special[:, :-1]], axis=1)  # [batch, seq]
    starts = table[inputs] | special | after_special | new_document  # [batch, seq]
    index = jnp.broadcast_to(jnp.arange(inputs.shape[1], dtype=jnp.int32), inputs.shape)
    word_start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)  # [batch, seq]
    return jnp.take_along_axis(draws, word_start_index, axis=1)


def objective_for(model_cfg: ModelConfig, special: SpecialTokens | None, probability: float,
                  whole_word: bool, span_corruption: Objective | None = None) -> Objective:
  """The objective of a model: causal LM (gpt), masked LM (bert "lm"), labels (classify / tag),
  and for "encdec": `span_corruption` on text (see `span_corruption.span_corruption_for`, None
  for seq2seq data), else the seq2seq targets as given.

  A bert "lm" model without `special` (e.g. `plan`, where shapes are all that matter) masks with
  the last id and no special ids."""
  if model_cfg.head != "lm":
    return LABELS
  if model_cfg.family == "gpt":
    return CAUSAL_LM
  if model_cfg.family == "encdec":
    return span_corruption or SEQ2SEQ
  if special is None:
    return MaskedLM(model_cfg.vocab_size - 1, (), model_cfg.vocab_size, probability)
  if whole_word and special.word_start is None:
    raise UserError("train.whole_word_masking=True needs a tokenizer that marks word starts "
                    "(wordpiece); set data.tokenizer=wordpiece or whole_word_masking=False")
  word_start = special.word_start if whole_word else None
  if word_start is not None and len(word_start) != model_cfg.vocab_size:
    raise UserError(f"the tokenizer's word-start table has {len(word_start)} entries for a "
                    f"vocabulary of {model_cfg.vocab_size}; retrain or reimport the tokenizer")
  return MaskedLM(special.mask_id, tuple(special.special_ids), model_cfg.vocab_size, probability,
                  word_start)
