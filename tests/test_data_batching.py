"""TrainBatches / eval_batches / unigram_perplexity: order is a pure function of (seed, index)."""

import math

import numpy as np
import pytest

from llmos_jax.data import TrainBatches, eval_batches, unigram_perplexity
from llmos_jax.data.pipeline import split_documents

N, T = 21, 5  # An epoch that no batch size below divides evenly.


def marked_rows(n=N, t=T):
    """Rows whose first token is the row's index, so a batch says which rows it holds."""
    tokens = np.tile(np.arange(n, dtype=np.int32)[:, None] + 100, (1, t))
    return {
        "tokens": tokens,
        "segment_ids": np.ones((n, t), np.int32),
        "positions": np.tile(np.arange(t, dtype=np.int32), (n, 1)),
    }


def rows_of(batch):
    return (batch["tokens"][:, 0] - 100).tolist()


def example_stream(batches: TrainBatches, count: int) -> list[int]:
    steps = math.ceil(count / batches.global_batch_size)
    return [r for s in range(steps) for r in rows_of(batches.batch(s))][:count]


def test_batch_shapes_and_loss_mask():
    rows = marked_rows()
    rows["segment_ids"][3, 2:] = 0
    batch = TrainBatches(rows, 8, seed=0).batch(0)
    assert set(batch) == {"tokens", "segment_ids", "positions", "loss_mask"}
    assert all(v.shape == (8, T) and v.dtype == np.int32 for v in batch.values())
    np.testing.assert_array_equal(batch["loss_mask"], (batch["segment_ids"] > 0).astype(np.int32))


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_stitch_to_the_single_host_batch(hosts):
    rows = marked_rows()
    single = TrainBatches(rows, 8, seed=3)
    parts = [
        TrainBatches(rows, 8, seed=3, process_index=p, process_count=hosts) for p in range(hosts)
    ]
    for step in (0, 1, 7, 100):
        whole = single.batch(step)
        for key in whole:
            stitched = np.concatenate([part.batch(step)[key] for part in parts])
            np.testing.assert_array_equal(stitched, whole[key])


def test_every_row_once_per_epoch_and_epochs_differ():
    stream = example_stream(TrainBatches(marked_rows(), 4, seed=0), 4 * N)
    epochs = [stream[e * N : (e + 1) * N] for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(N))
    assert len({tuple(order) for order in epochs}) == 4
    assert epochs[0] != list(range(N))  # Actually shuffled.


def test_order_is_a_function_of_seed_and_example_index():
    rows = marked_rows()
    stream = example_stream(TrainBatches(rows, 4, seed=5), 3 * N)
    # Same seed: identical, whatever the batch size (global example g is the same example).
    assert example_stream(TrainBatches(rows, 4, seed=5), 3 * N) == stream
    assert example_stream(TrainBatches(rows, 6, seed=5), 3 * N) == stream
    # Another seed: another order, and not grain's `seed + epoch` alias of the next epoch.
    other = example_stream(TrainBatches(rows, 4, seed=6), 3 * N)
    assert other[:N] != stream[:N] and other[:N] != stream[N : 2 * N]


def test_iterator_resumes_exactly():
    batches = TrainBatches(marked_rows(), 4, seed=1)
    it = batches.iterator(start_step=9)
    for step in range(9, 13):
        np.testing.assert_array_equal(next(it)["tokens"], batches.batch(step)["tokens"])


def test_bad_host_split_is_rejected():
    with pytest.raises(ValueError, match="global_batch_size=6"):
        TrainBatches(marked_rows(), 6, seed=0, process_index=0, process_count=4)


def test_eval_batches_in_order_with_zero_padding():
    rows = marked_rows(n=10)
    batches = eval_batches(rows, 4)
    assert len(batches) == 3
    assert [rows_of(b) for b in batches[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    last = batches[2]
    assert all(v.shape == (4, T) for v in last.values())
    assert rows_of(last)[:2] == [8, 9]
    for key in last:
        assert not last[key][2:].any()
    np.testing.assert_array_equal(last["loss_mask"].sum(axis=1), [T, T, 0, 0])
    # Hosts' slices stitch back to the global batches; max_batches truncates.
    halves = [eval_batches(rows, 4, process_index=p, process_count=2) for p in range(2)]
    for b in range(3):
        stitched = np.concatenate([halves[0][b]["tokens"], halves[1][b]["tokens"]])
        np.testing.assert_array_equal(stitched, batches[b]["tokens"])
    assert len(eval_batches(rows, 4, max_batches=2)) == 2


def test_unigram_perplexity_by_hand():
    train = {"tokens": np.array([[2, 4, 4, 3]]), "segment_ids": np.array([[1, 1, 1, 1]])}
    # Targets: row 0 -> [4] (then padding); row 1 -> [1] and the second 2 (the first 2 opens
    # segment 2, so nothing predicts it).
    evaluation = {
        "tokens": np.array([[2, 4, 0, 0], [3, 1, 2, 2]]),
        "segment_ids": np.array([[1, 1, 0, 0], [1, 1, 2, 2]]),
    }
    # Train targets 4, 4, 3 with add-one over V=5: p(4)=3/8, p(1)=p(2)=1/8.
    expected = (8 / 3 * 8 * 8) ** (1 / 3)
    assert unigram_perplexity(train, evaluation, vocab_size=5) == pytest.approx(expected)


def test_split_documents():
    held_out = split_documents(20000, 0.1, seed=0)
    assert 0.09 < held_out.mean() < 0.11
    np.testing.assert_array_equal(held_out, split_documents(20000, 0.1, seed=0))
    assert (held_out != split_documents(20000, 0.1, seed=1)).any()
    # Prefixes agree: capping max_documents does not reshuffle the split of the kept documents.
    np.testing.assert_array_equal(split_documents(500, 0.1, seed=0), held_out[:500])
    tiny = split_documents(2, 0.01, seed=0)
    assert tiny.sum() == 1
