"""Weighted mixtures of prepared sources (data.mixture, data.mixture_stages): which source each row
of each global batch comes from, and the batches themselves.

Rows are dealt deterministically by smooth weighted round robin: before each row every source's
credit grows by its weight (weights normalised to sum 1), the source with the most credit (the
first on a tie) gives the row and loses 1. After n rows a source has given within one row of
weight * n, at any batch size; a stage that changes the weights changes them from its step on.
Each source has its own seeded, per-epoch shuffle of its windows (grain), read by position, so a
source's k-th row is always its window order[k]. The iterator's state (batches done, credits and
rows drawn per source) is a small JSON dict, saved in every checkpoint: resume is exact, across
stage changes too. Every process deals the whole global batch (cheap: no data is read), then reads
only the windows of its own rows, so the batches do not depend on the process count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence

import grain
import numpy as np

from jaxlm.data.pipeline import check_batch_split
from jaxlm.data.shards import ShardedTokens
from jaxlm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Schedule:
  names: tuple[str, ...]
  directories: tuple[str, ...]
  stages: tuple[tuple[int, tuple[float, ...]], ...]  # (first batch, normalised weights), sorted

  def weights(self, batch: int) -> tuple[float, ...]:
    """The weights of global batch `batch` (0-based: the batch of step batch + 1)."""
    return [weights for start, weights in self.stages if start <= batch][-1]


def _weights(values, count: int, where: str) -> tuple[float, ...]:
  if not isinstance(values, (tuple, list)) or len(values) != count:
    raise UserError(f"{where} must give {count} weights, one per source of data.mixture; got "
                    f"{values!r}")
  try:
    weights = [float(w) for w in values]
  except (TypeError, ValueError):
    raise UserError(f"{where} holds a weight that is not a number: {values!r}") from None
  if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
    raise UserError(f"{where} weights {values!r} do not sum to a positive number (each must be "
                    ">= 0 and finite, at least one > 0); fix the weights")
  return tuple(w / sum(weights) for w in weights)


def schedule_of(mixture: Sequence, stages: Sequence) -> Schedule:
  """The checked schedule of data.mixture ((name, directory, weight), ...) and
  data.mixture_stages ((step, (weight, ...)), ...)."""
  if any(not isinstance(e, (tuple, list)) or len(e) != 3 or not isinstance(e[0], str)
         or not isinstance(e[1], str) for e in mixture):
    raise UserError(f"data.mixture={mixture!r} must be ((name, directory, weight), ...), e.g. "
                    "(('web', '/data/web', 0.8), ('code', '/data/code', 0.2))")
  names, directories = [e[0] for e in mixture], [e[1] for e in mixture]
  for kind, values in (("name", names), ("directory", directories)):
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
      raise UserError(f"data.mixture names the source {kind} {twice[0]!r} twice; give each "
                      f"source once, with one {kind}")
  if any(not name or "/" in name for name in names):
    raise UserError(f"data.mixture source names {names!r} must be non-empty and without '/'")
  out = [(0, _weights([e[2] for e in mixture], len(mixture), "data.mixture"))]
  for stage in stages:
    if (not isinstance(stage, (tuple, list)) or len(stage) != 2 or not isinstance(stage[0], int)
        or stage[0] <= out[-1][0]):
      raise UserError(f"data.mixture_stages={stages!r} must be ((step, (weight, ...)), ...) with "
                      "positive, increasing steps")
    out.append((stage[0], _weights(stage[1], len(mixture), f"data.mixture_stages step {stage[0]}")))
  return Schedule(tuple(names), tuple(directories), tuple(out))


def deal(credit: list[float], drawn: list[int], weights: Sequence[float],
         rows: int) -> list[tuple[int, int]]:
  """(source, that source's row number) of `rows` rows; advances `credit` and `drawn`."""
  out = []
  for _ in range(rows):
    for i, w in enumerate(weights):
      credit[i] += w
    source = max(range(len(credit)), key=credit.__getitem__)  # the first of the largest
    credit[source] -= 1.0
    out.append((source, drawn[source]))
    drawn[source] += 1
  return out


def source_seed(seed: int, name: str) -> int:
  """A source's shuffle seed: its name's, so its order does not depend on its place in the list."""
  return int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:4], "little")


class MixtureBatches:
  """Endless batches of this process's rows of each global batch, drawn from `sources` by
  `schedule`; `get_state` / `set_state` as a grain iterator."""

  def __init__(self, sources: Sequence[ShardedTokens], schedule: Schedule, global_batch: int,
               seed: int, process_index: int, process_count: int):
    check_batch_split(global_batch, seed, process_index, process_count)
    for name, source in zip(schedule.names, sources):
      if source.num_full_windows < 1:
        raise UserError(f"mixture source {name!r} has no full window of data.seq_len tokens; "
                        "use a smaller data.seq_len or more data")
    self.sources, self.schedule, self.global_batch = list(sources), schedule, global_batch
    self.local = global_batch // process_count
    self.first = process_index * self.local
    self.orders = [grain.MapDataset.range(s.num_full_windows).shuffle(seed=source_seed(seed, n))
                   .repeat(None) for s, n in zip(sources, schedule.names)]
    self.set_state({"batch": 0, "credit": [0.0] * len(sources), "drawn": [0] * len(sources)})

  def get_state(self) -> dict:
    return {"batch": self.batch, "credit": list(self.credit), "drawn": list(self.drawn)}

  def set_state(self, state: dict) -> None:
    if len(state.get("drawn", ())) != len(self.sources):
      raise UserError(f"the checkpoint's data position is not that of a mixture of "
                      f"{len(self.sources)} sources; use the original data settings")
    self.batch = int(state["batch"])
    self.credit = [float(c) for c in state["credit"]]
    self.drawn = [int(d) for d in state["drawn"]]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = deal(self.credit, self.drawn, self.schedule.weights(self.batch), self.global_batch)
    self.batch += 1
    mine = rows[self.first : self.first + self.local]
    out = None
    for source in sorted({s for s, _ in mine}):
      at = [r for r, (s, _) in enumerate(mine) if s == source]  # this process's rows from it
      windows = np.array([self.orders[source][mine[r][1]] for r in at])  # [len(at)]
      fields = self.sources[source].rows(windows)
      if out is None:
        out = {k: np.empty((self.local, *v.shape[1:]), v.dtype) for k, v in fields.items()}
      for name, values in fields.items():
        out[name][at] = values
    return out


def tokens_seen(state: dict, names: Sequence[str], seq_len: int) -> dict[str, int]:
  """Training tokens drawn so far from each source (all processes together), for the log."""
  return {f"tokens_{name}": drawn * seq_len for name, drawn in zip(names, state["drawn"])}
