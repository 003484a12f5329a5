"""Paired significance tests of two classifiers scored on the same examples.

    mcnemar_exact   one run of each: the exact (binomial) McNemar test on the examples exactly one
                    of the two gets right; the examples both get right or both wrong carry no
                    information about which is better.
    sign_flip_test  several runs (seeds) of each: per example, the difference of the two models'
                    mean correctness over their runs; under "no difference" each example's
                    difference is as likely to have either sign, so its sum is compared with the
                    sums of randomly sign-flipped differences (a paired permutation test). With
                    one run per model the differences are -1, 0, 1 and this is McNemar's test
                    again, drawn at random instead of counted.
Both are two-sided: a p-value says how often a difference at least this large, either way, comes
from chance. Pairing matters here: most held-out examples are easy or hard for every model, so
the unpaired binomial standard errors of two accuracies overstate the noise of their difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
  """{"a_only", "b_only", "p"}: examples only A / only B gets right, and the two-sided exact p."""
  if len(a_correct) != len(b_correct):
    raise ValueError(f"{len(a_correct)} results of A but {len(b_correct)} of B")
  a_only = sum(bool(a) and not bool(b) for a, b in zip(a_correct, b_correct))
  b_only = sum(bool(b) and not bool(a) for a, b in zip(a_correct, b_correct))
  n = a_only + b_only
  # P(X <= min) for X ~ Binomial(n, 1/2), doubled: the distribution is symmetric.
  tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2 ** n
  return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2 * tail)}


def sign_flip_test(differences: Sequence[float], draws: int = 100_000, seed: int = 0) -> float:
  """Two-sided p of the paired differences' sum (see the module docstring), from `draws` seeded
  random sign flips; the observed signs count as one draw, so p is never 0."""
  d = np.asarray(differences, np.float64)  # [examples]
  observed = abs(d.sum())
  rng = np.random.default_rng(seed)
  at_least = 0
  for start in range(0, draws, 10_000):  # in blocks: [block, examples] stays small
    signs = rng.choice((-1.0, 1.0), size=(min(10_000, draws - start), len(d)))
    at_least += int((np.abs(signs @ d) >= observed - 1e-9).sum())
  return (at_least + 1) / (draws + 1)
