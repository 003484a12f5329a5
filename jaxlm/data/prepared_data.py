"""Training data from prepared directories (data.source=prepared): one, or a weighted mixture.

Nothing is read or tokenised at start-up: each directory's manifest and tokenizer are read and its
shards mapped (shards.py), so start-up time and memory do not grow with the corpus. One directory
trains exactly as the same data in memory does (the same windows, shuffle and batches:
`pipeline.train_batches` over the mapped stream); a mixture draws its rows by weight
(mixture.py). Every source keeps its own validation split, evaluated per source and overall.
"""

from __future__ import annotations

import dataclasses

from jaxlm.data import mixture as mixture_lib
from jaxlm.data.manifest import Prepared, open_prepared, sentinels_of
from jaxlm.data.pipeline import train_batches
from jaxlm.data.shards import ShardedTokens
from jaxlm.errors import UserError


@dataclasses.dataclass(frozen=True)
class PreparedSources:
  names: tuple[str, ...]  # ("",) for a single data.path
  opened: tuple[Prepared, ...]
  schedule: mixture_lib.Schedule | None  # None: one directory, no mixture

  @property
  def tokenizer(self):
    return self.opened[0].tokenizer

  def val_sets(self) -> list[tuple[str, ShardedTokens, float]]:
    """(name, validation windows, UTF-8 bytes per scored token) of every source."""
    return [(name, p.val, p.val_bytes_per_token) for name, p in zip(self.names, self.opened)]

  def iterator(self, global_batch: int, seed: int, block: int, blocks: int):
    """This process's rows of every training batch, with get_state / set_state."""
    if self.schedule is None:
      return iter(train_batches(self.opened[0].train, global_batch, seed, block, blocks))
    return mixture_lib.MixtureBatches([p.train for p in self.opened], self.schedule,
                                      global_batch, seed, block, blocks)

  def check_sentinels(self) -> None:
    """Span corruption (an encdec run on prepared text) needs the tokenizer's sentinels, which
    `prepare` trains only with an encdec config."""
    if not sentinels_of(self.tokenizer):
      raise UserError(f"{self.opened[0].directory} was prepared with a {self.tokenizer.kind} "
                      "tokenizer without the sentinel tokens that span corruption needs; prepare "
                      "it again into a new --out with the encdec config (model.family=encdec, "
                      "data.tokenizer=sentencepiece, data.num_sentinels > 0)")

  def describe(self) -> str:
    parts = []
    for name, p in zip(self.names, self.opened):
      label = f"{name} ({p.directory})" if name else p.directory
      parts.append(f"{label}: {p.train.num_full_windows:,} train / {len(p.val):,} val windows "
                   f"of {p.train.seq_len} tokens")
    return "prepared data " + "; ".join(parts)


def check_data_source(c) -> None:
  """data.mixture and its stages belong to data.source=prepared, instead of data.path."""
  if c.source != "prepared":
    if c.mixture or c.mixture_stages:
      raise UserError(f"data.mixture mixes prepared directories; set --config.data.source="
                      f"prepared (not {c.source!r}) or drop data.mixture")
    return
  if c.mixture and c.path:
    raise UserError(f"data.path={c.path!r} and data.mixture are both set; give one prepared "
                    "directory in data.path or several in data.mixture (--config.data.path= to "
                    "clear data.path)")
  if c.mixture_stages and not c.mixture:
    raise UserError("data.mixture_stages changes the weights of data.mixture, which is empty; "
                    "set data.mixture or drop data.mixture_stages")


def open_sources(c) -> PreparedSources:
  """The prepared directories of a DataConfig, opened and checked to share one tokenizer, the
  one data.tokenizer names."""
  check_data_source(c)
  if c.mixture:
    schedule = mixture_lib.schedule_of(c.mixture, c.mixture_stages)
    names, directories = schedule.names, schedule.directories
  else:
    schedule, names, directories = None, ("",), (c.path,)
  opened = tuple(open_prepared(d, c.seq_len) for d in directories)
  first = opened[0]
  for name, other in zip(names[1:], opened[1:]):
    if other.manifest["tokenizer"]["sha256"] != first.manifest["tokenizer"]["sha256"]:
      raise UserError(f"mixture source {name!r} ({other.directory}) was prepared with another "
                      f"tokenizer than {names[0]!r} ({first.directory}); prepare it again with "
                      f"--config.data.tokenizer_file={first.directory}/tokenizer.json")
  if first.tokenizer.kind != c.tokenizer:
    raise UserError(f"{first.directory} was prepared with a {first.tokenizer.kind} tokenizer, but "
                    f"data.tokenizer={c.tokenizer!r}; set --config.data.tokenizer="
                    f"{first.tokenizer.kind} or prepare the data with this config")
  return PreparedSources(tuple(names), opened, schedule)
