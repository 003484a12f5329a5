"""Prefetch: batches in order, the iterator state of the last batch handed out, errors passed on."""

import numpy as np
import pytest

from jaxlm.data import pack_documents, train_batches
from jaxlm.training.prefetch import Prefetch


def windows():
  return pack_documents([list(range(2, 40))] * 8, eos_id=1, seq_len=4)


def test_prefetch_yields_the_same_batches_and_a_state_that_resumes_after_the_last_one():
  plain = iter(train_batches(windows(), 4, seed=0, process_index=0, process_count=1))
  prefetched = Prefetch(iter(train_batches(windows(), 4, seed=0, process_index=0, process_count=1)),
                        prepare=lambda rows: rows["inputs"] * 10)
  for _ in range(5):
    np.testing.assert_array_equal(next(prefetched), next(plain)["inputs"] * 10)
  state = prefetched.state()  # the producer has run ahead; the state must not have
  assert state == plain.get_state()
  resumed = iter(train_batches(windows(), 4, seed=0, process_index=0, process_count=1))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], next(plain)["inputs"])
  prefetched.close()


def test_prefetch_raises_the_producers_error_in_the_consumer():
  def prepare(rows):
    raise ValueError("bad batch")

  prefetched = Prefetch(iter(train_batches(windows(), 4, seed=0, process_index=0, process_count=1)),
                        prepare)
  with pytest.raises(ValueError, match="bad batch"):
    next(prefetched)
  prefetched.close()
