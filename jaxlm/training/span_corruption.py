"""T5's span corruption: a pure `prepare(batch, key)` from packed text rows to encoder-decoder rows.

The input is an ordinary packed LM batch (`inputs`, `segment_ids`, `weights`, `[batch, seq]`, the
documents of a row told apart by their segment ids). A document's tokens are the real inputs of its
segment (weight > 0) less its leading EOS; position 0 of a row is never a document token, so a row
that starts inside a document gives up that one token and every document keeps a free slot for the
EOS the encoder adds. That bounds the encoder side by `seq` with nothing cut.

For a document of L tokens (T5's `random_spans_noise_mask`, per document): N = round(L * density)
noise tokens, clipped to [1, L - 1] (none when L < 2), in S = round(N / mean_span) spans, clipped to
[1, min(N, L - N)]; the N noise tokens are cut into S non-empty spans and the L - N others into S
non-empty runs, each of the two compositions drawn uniformly (T5: S - 1 of the gaps chosen at
random), and laid out as run 0, span 0, run 1, span 1, ... so a document ends in a noise span.
Spans never cross documents; the k-th span of a document is sentinel k (`sentinel_ids[k]`).

Per document (segment d + 1 on both sides, documents renumbered 1, 2, ... per row):
  encoder: its non-noise tokens with each span replaced by its sentinel, then EOS (T5);
  targets: for each span its sentinel then its tokens; then EOS (T5 ends every target with it);
  decoder inputs: the targets shifted right within the document, the first one 0 (T5's start id);
  positions restart at 0 per document on both sides; weights 1 on real targets; padding segment 0.
Encoder rows are `[batch, seq]`, decoder rows `[batch, target_len]`; targets past target_len are
cut and counted in `targets_cut  # [batch] int32` (see `target_len_for` for the default length).
Every draw comes from the key (one per row, split from it): the same key, the same batch.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import UserError

Batch = dict[str, jax.Array]
DECODER_START_ID = 0  # T5 starts every decoder sequence with the pad id


def noise_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
  """(noise tokens, noise spans) of a document of `length` tokens, in T5's rounding."""
  if length < 2:
    return 0, 0
  noise = min(max(int(np.round(length * density)), 1), length - 1)
  spans = min(max(int(np.round(noise / mean_span)), 1), noise, length - noise)
  return noise, spans


def target_len_for(seq_len: int, density: float, mean_span: float) -> int:
  """The default decoder length of span-corrupted rows of `seq_len` inputs.

  T5's `random_spans_helper` rule for one document filling the row (seq_len - 1 tokens, the first
  slot being its EOS): noise + spans + 1 (the EOS), plus 8 for the EOS and rounding of further
  documents in the row, rounded up to a multiple of 8. Rows of several short documents can need
  more (up to seq_len); what does not fit is cut and counted (`targets_cut`)."""
  noise, spans = noise_counts(seq_len - 1, density, mean_span)
  return int(math.ceil((noise + spans + 1 + 8) / 8) * 8)


@dataclasses.dataclass(frozen=True, eq=False)
class SpanCorruption:
  """T5's span-corruption objective (see the module docstring)."""
  sentinel_ids: tuple[int, ...]  # sentinel k's token id, k = 0, 1, ...
  eos_id: int
  target_len: int
  noise_density: float = 0.15
  mean_noise_span: float = 3.0
  name = "span_corruption"

  def __post_init__(self):
    if not 0.0 < self.noise_density < 1.0:
      raise UserError(f"train.noise_density={self.noise_density} is not in (0, 1); T5 uses 0.15")
    if self.mean_noise_span < 1.0:
      raise UserError(f"train.mean_noise_span={self.mean_noise_span} is below 1; T5 uses 3.0")
    if not self.sentinel_ids:
      raise UserError("span corruption needs sentinel tokens; set data.num_sentinels >= 1 and "
                      "use a sentencepiece tokenizer trained for an encdec run")
    if self.target_len < 1:
      raise UserError(f"data.target_len={self.target_len} leaves no decoder row; set it to at "
                      "least 1, or to 0 to derive it from data.seq_len")

  def prepare(self, batch: Batch, key: jax.Array) -> Batch:
    if "encoder_inputs" in batch:  # seq2seq rows (a task evaluated on a pretrained run): ready
      return batch
    inputs = batch["inputs"]  # [batch, seq]
    keys = jax.random.split(key, inputs.shape[0])  # one per row
    return jax.vmap(self._row)(inputs, batch["segment_ids"], batch["weights"], keys)

  def _tables(self, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """Noise tokens and spans of a document of each length 0 ... seq_len, as constants."""
    counts = np.array([noise_counts(n, self.noise_density, self.mean_noise_span)
                       for n in range(seq_len + 1)], np.int32)  # [seq + 1, 2]
    return jnp.asarray(counts[:, 0]), jnp.asarray(counts[:, 1])

  def _row(self, inputs, segment_ids, weights, key) -> Batch:
    """One row: `inputs`, `segment_ids`, `weights` [seq] -> the encoder-decoder fields."""
    seq = inputs.shape[0]
    index = jnp.arange(seq, dtype=jnp.int32)
    real = (weights > 0) & (segment_ids > 0) & (inputs != self.eos_id) & (index > 0)
    doc = _document_numbers(segment_ids, real)  # [seq], 1.. on document tokens, else 0
    # Compacted: document tokens first, in order (all later work is on contiguous documents).
    order = jnp.argsort(~real, stable=True)  # [seq]
    tokens_c, doc_c = inputs[order], doc[order]  # [seq]
    noise_c = self._noise_mask(doc_c, key)  # [seq] bool, compacted
    return self._emit(tokens_c, doc_c, noise_c)

  def _noise_mask(self, doc: jax.Array, key: jax.Array) -> jax.Array:
    """The noise mask of compacted document tokens (`doc  # [seq]`, 0 past the last token)."""
    seq = doc.shape[0]
    valid = doc > 0
    length = jax.ops.segment_sum(valid.astype(jnp.int32), doc, seq + 1)  # [seq + 1] per document
    noise_table, span_table = self._tables(seq)
    rank = _rank_in_segment(doc)  # [seq]
    doc_len = length[doc]
    noise_n, spans = noise_table[doc_len], span_table[doc_len]  # [seq], of each token's document
    kept_n = doc_len - noise_n
    is_noise_item = rank >= kept_n  # items: kept 0 .. kept_n - 1, then noise 0 .. noise_n - 1
    item = jnp.where(is_noise_item, rank - kept_n, rank)
    # The gap before item i >= 1 of either kind may start a new run / span; S - 1 of each drawn.
    slot = valid & (item >= 1) & (spans >= 1)
    group = jnp.where(slot, doc * 2 + is_noise_item, 2 * seq + 2)  # [seq]
    draws = jax.random.uniform(key, (seq,))
    sorted_group, _, where_from = jax.lax.sort((group, draws, jnp.arange(seq)), num_keys=2)
    chosen_sorted = (_rank_in_segment(sorted_group) < spans[where_from] - 1) & slot[where_from]
    chosen = jnp.zeros(seq, bool).at[where_from].set(chosen_sorted)
    run = _count_in_segment(chosen, doc * 2 + is_noise_item)  # run / span index of each item
    # Lay out run 0, span 0, run 1, span 1, ...: sort by (document, 2 * run + kind, rank).
    layout = (jnp.where(valid, doc, seq + 1), 2 * run + is_noise_item, rank)
    _, _, _, noise_sorted = jax.lax.sort((*layout, is_noise_item), num_keys=3)
    return noise_sorted & valid

  def _emit(self, tokens, doc, noise) -> Batch:
    """Encoder and decoder rows of compacted tokens `tokens`, documents `doc`, `noise` [seq]."""
    seq = tokens.shape[0]
    valid = doc > 0
    after = jnp.concatenate([doc[1:], jnp.zeros(1, doc.dtype)])
    before = jnp.concatenate([jnp.zeros(1, doc.dtype), doc[:-1]])
    noise_before = jnp.concatenate([jnp.zeros(1, bool), noise[:-1]])
    doc_end = valid & (after != doc)
    span_start = noise & ((before != doc) | ~noise_before)
    span = _count_in_segment(span_start, doc) - 1  # [seq], span index within the document
    table = jnp.asarray(self.sentinel_ids, jnp.int32)
    sentinel = table[jnp.clip(span, 0, len(self.sentinel_ids) - 1)]
    # Encoder: kept tokens, a sentinel for each span's first token, the EOS after each document.
    kept = valid & (~noise | span_start)
    encoder = _Writer(seq, _exclusive_cumsum(kept.astype(jnp.int32) + doc_end))
    encoder.put(kept, 0, jnp.where(noise, sentinel, tokens), doc)
    encoder.put(doc_end, kept, self.eos_id, doc)
    # Decoder: each span's sentinel, the noise tokens, the EOS after each document.
    counts = span_start.astype(jnp.int32) + noise + doc_end
    decoder = _Writer(self.target_len, _exclusive_cumsum(counts))
    decoder.put(span_start, 0, sentinel, doc)
    decoder.put(noise, span_start, tokens, doc)
    decoder.put(doc_end, span_start.astype(jnp.int32) + noise, self.eos_id, doc)
    targets, segments = decoder.tokens, decoder.segments
    first = jnp.concatenate([jnp.ones(1, bool), segments[1:] != segments[:-1]])
    shifted = jnp.concatenate([jnp.zeros(1, targets.dtype), targets[:-1]])
    return {
        "encoder_inputs": encoder.tokens,  # [seq]
        "encoder_positions": _positions(encoder.segments),
        "encoder_segment_ids": encoder.segments,
        "inputs": jnp.where(first, DECODER_START_ID, shifted),  # [target_len]
        "targets": targets,
        "positions": _positions(segments),
        "segment_ids": segments,
        "weights": (segments > 0).astype(jnp.float32),
        "targets_cut": jnp.maximum(counts.sum() - self.target_len, 0).astype(jnp.int32),
    }


class _Writer:
  """Scatters emissions into a row of `length`: token i's emissions start at `start[i]`; those
  past the row's end are dropped."""

  def __init__(self, length: int, start: jax.Array):
    self.length, self.start = length, start
    self.tokens = jnp.zeros(length, jnp.int32)
    self.segments = jnp.zeros(length, jnp.int32)

  def put(self, mask, offset, values, segments) -> None:
    where = jnp.where(mask, self.start + offset, self.length)  # past the end: dropped
    values = jnp.broadcast_to(jnp.asarray(values, jnp.int32), where.shape)
    self.tokens = self.tokens.at[where].set(values, mode="drop")
    self.segments = self.segments.at[where].set(segments.astype(jnp.int32), mode="drop")


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  return jnp.cumsum(x) - x


def _rank_in_segment(segment: jax.Array) -> jax.Array:
  """Index of each element within its run of equal values of `segment  # [n]`."""
  index = jnp.arange(segment.shape[0], dtype=jnp.int32)
  start = jnp.concatenate([jnp.ones(1, bool), segment[1:] != segment[:-1]])
  return index - jax.lax.cummax(jnp.where(start, index, 0))


def _count_in_segment(flags: jax.Array, segment: jax.Array) -> jax.Array:
  """Running count of `flags` within each run of equal `segment` values, this one included."""
  total = jnp.cumsum(flags.astype(jnp.int32))
  start = jnp.concatenate([jnp.ones(1, bool), segment[1:] != segment[:-1]])
  base = jax.lax.cummax(jnp.where(start, total - flags, 0))  # the count before the run
  return total - base


def _positions(segments: jax.Array) -> jax.Array:
  """Positions from 0 in each segment; 0 on padding."""
  return jnp.where(segments > 0, _rank_in_segment(segments), 0)


def _document_numbers(segment_ids: jax.Array, real: jax.Array) -> jax.Array:
  """1, 2, ... for the segments that hold document tokens, in order, on their tokens; else 0."""
  seq = segment_ids.shape[0]
  new_run = jnp.concatenate([jnp.ones(1, bool), segment_ids[1:] != segment_ids[:-1]])
  run = jnp.cumsum(new_run) - 1  # [seq], 0-based run of equal segment ids
  has_tokens = jax.ops.segment_max(real.astype(jnp.int32), run, seq) > 0  # [seq] per run
  number = jnp.cumsum(has_tokens)  # [seq] per run
  return jnp.where(real, number[run], 0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SpanTokens:
  """What span corruption needs from a run's tokenizer (training.setup.special_tokens)."""
  sentinel_ids: tuple[int, ...]
  eos_id: int
  kind: str


def shape_only_tokens(vocab_size: int, num_sentinels: int) -> SpanTokens:
  """Stand-ins where only shapes matter (`plan`, an engine without a tokenizer): the last ids."""
  return SpanTokens(tuple(range(vocab_size - 1, vocab_size - 1 - num_sentinels, -1)), 1,
                    "shape-only")


def span_corruption_for(data_format: str, seq_len: int, target_len: int, noise_density: float,
                        mean_noise_span: float, tokenizer) -> SpanCorruption | None:
  """The span-corruption objective of an encdec run on text (`data_format` "text"), None for
  seq2seq data (its batches come ready). `tokenizer` must expose `sentinel_ids` and `eos_id`;
  target_len 0 takes `target_len_for`. A document of seq_len - 1 tokens must not have more
  spans than there are sentinels."""
  if data_format != "text":
    return None
  sentinels = tuple(getattr(tokenizer, "sentinel_ids", ()) or ())
  if not sentinels:
    raise UserError(f"span corruption needs sentinel tokens, which the {tokenizer.kind} tokenizer "
                    "lacks; use data.tokenizer=sentencepiece (trained for an encdec run, with "
                    "data.num_sentinels > 0)")
  _, spans = noise_counts(seq_len - 1, noise_density, mean_noise_span)
  if spans > len(sentinels):
    raise UserError(f"a document of data.seq_len={seq_len} tokens can have {spans} noise spans "
                    f"but the tokenizer has {len(sentinels)} sentinels; raise data.num_sentinels "
                    "(a new tokenizer) or lower data.seq_len")
  return SpanCorruption(sentinels, int(tokenizer.eos_id),
                        target_len or target_len_for(seq_len, noise_density, mean_noise_span),
                        noise_density, mean_noise_span)
