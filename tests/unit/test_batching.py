import random

import pytest

from seqembed.compute.batching import (
    USABLE_MEMORY_SHARE,
    fixed_budget,
    make_batches,
    memory_budget,
)


def lengths_sample(count=500, seed=3):
    rng = random.Random(seed)
    return [rng.randint(1, 1500) for _ in range(count)]


@pytest.mark.parametrize("toks_per_batch", [1, 500, 1024, 4096, 100_000])
def test_every_sequence_once_longest_first_within_budget(toks_per_batch):
    lengths = lengths_sample()
    batches = make_batches(lengths, fixed_budget(toks_per_batch), extra_tokens=2, truncation=1022)
    indices = [i for batch in batches for i in batch.indices]
    assert sorted(indices) == list(range(len(lengths)))
    padded = [min(lengths[i], 1022) + 2 for i in indices]
    assert padded == sorted(padded, reverse=True)
    for batch in batches:
        assert batch.padded_length == max(min(lengths[i], 1022) + 2 for i in batch.indices)
        # over budget only as a batch of one: a sequence longer than the budget still runs
        assert batch.computed_tokens <= toks_per_batch or len(batch.indices) == 1


def test_batches_are_as_full_as_the_budget_allows():
    batches = make_batches([100] * 50, fixed_budget(1020), extra_tokens=2, truncation=1022)
    assert [len(batch.indices) for batch in batches] == [10] * 5


def test_memory_budget_follows_the_measured_cost_per_sequence():
    def cost(tokens):  # bytes per sequence: linear plus a quadratic part
        return 300_000 * tokens + 200 * tokens * tokens

    budget = memory_budget(40 * 2**30, cost)
    per_batch = [budget(tokens) // tokens for tokens in (100, 300, 1024)]
    assert per_batch[0] > per_batch[1] > per_batch[2] >= 1
    # what fits in the usable share of the free memory, and no more
    for tokens in (100, 300, 1024):
        sequences = budget(tokens) // tokens
        assert sequences * cost(tokens) <= 40 * 2**30 * USABLE_MEMORY_SHARE
        assert (sequences + 1) * cost(tokens) > 40 * 2**30 * USABLE_MEMORY_SHARE


def test_no_memory_still_runs_one_sequence_at_a_time():
    assert memory_budget(0, lambda tokens: 1e6)(1024) == 1024


def test_empty_file_gives_no_batches():
    assert make_batches([], fixed_budget(1024), extra_tokens=2, truncation=1022) == []
