"""Batches of packed rows: data order is a pure function of (seed, global example index).

* Training examples: global example g (= step * global_batch_size + i) lies in epoch
  e = g // N (N packed rows) at offset k = g % N, and reads row `perm_e[k]`, where `perm_e` is a
  grain `MapDataset.range(N).shuffle(seed=hash(seed, e))`. A fresh, hashed seed per epoch: grain's
  own `shuffle().repeat()` seeds epoch e with `seed + e` (grain 0.2.18), so a run with seed 1
  would replay the epochs of the run with seed 0, shifted by one.
* Each host computes only its slice of each global batch, so resuming at any step, on any number
  of hosts or devices, gives the same global batches, and so does changing nothing but the batch
  size (the example stream is the same; only its cut into steps moves).
* Evaluation reads the held-out rows in order, unshuffled.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from collections.abc import Iterator

import grain
import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic wraps silently on arrays, which is what the hash wants.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_u64(seed: int, index: np.ndarray, salt: int = 0) -> np.ndarray:
    """A 64-bit hash per index, a fixed function of (seed, salt, index)."""
    key = _splitmix64(np.asarray([seed % 2**64, salt % 2**64], dtype=np.uint64))
    return _splitmix64(np.asarray(index, dtype=np.uint64) ^ key[0] ^ (key[1] << np.uint64(1)))


def hash_uniform(seed: int, index: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uniform [0, 1) number per index, a fixed function of (seed, salt, index)."""
    return (hash_u64(seed, index, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _host_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} is not divisible by the "
            f"{process_count} hosts"
        )
    per_host = global_batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def _with_loss_mask(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "segment_ids" in batch:  # token rows; other fields (e.g. "images") ride along as they are
        batch["loss_mask"] = (batch["segment_ids"] > 0).astype(np.int32)
    return batch


class TrainBatches:
    """Shuffled training batches, each a pure function of (seed, step); see the module docstring.

    Args:
      rows: Packed rows ("tokens", "segment_ids", "positions", each [N, T]); any other [N, ...]
        field (e.g. "images") is batched the same way.
      global_batch_size: B, sequences per step over all hosts.
      seed: The data seed (config.seed).
      process_index: This host; it gets examples [p*B/P, (p+1)*B/P) of each global batch.
      process_count: P, the number of hosts.
    """

    def __init__(
        self,
        rows: dict[str, np.ndarray],
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.rows = dict(rows)
        self.num_rows = int(rows["tokens"].shape[0])
        if self.num_rows == 0:
            raise ValueError("TrainBatches: no packed rows")
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self._local = _host_slice(self.global_batch_size, process_index, process_count)
        self._epoch_cache: dict[int, grain.MapDataset] = {}
        self._lock = threading.Lock()

    def epoch_seed(self, epoch: int) -> int:
        """The 32-bit grain shuffle seed of `epoch` (grain needs seeds in [0, 2**32))."""
        return int(hash_u64(self.seed, np.asarray([epoch]), salt=2)[0] >> np.uint64(32))

    def _order(self, epoch: int) -> grain.MapDataset:
        with self._lock:  # The prefetch thread and the caller may both build batches.
            ds = self._epoch_cache.get(epoch)
            if ds is None:
                if len(self._epoch_cache) >= 64:  # A batch can span many epochs of tiny data.
                    self._epoch_cache.pop(next(iter(self._epoch_cache)))  # Oldest first.
                ds = grain.MapDataset.range(self.num_rows).shuffle(seed=self.epoch_seed(epoch))
                self._epoch_cache[epoch] = ds
            return ds

    def row_indices(self, step: int) -> np.ndarray:
        """Rows behind this host's examples of global batch `step`."""
        first = int(step) * self.global_batch_size
        examples = range(first + self._local.start, first + self._local.stop)
        return np.array(
            [self._order(g // self.num_rows)[g % self.num_rows] for g in examples], np.int64
        )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's slice of global batch `step`: [B/P, ...] arrays plus "loss_mask"."""
        index = self.row_indices(step)
        return _with_loss_mask({k: v[index] for k, v in self.rows.items()})

    def iterator(self, start_step: int = 0, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
        """batch(start_step), batch(start_step + 1), ... without end.

        `prefetch` batches are built ahead on one background thread (a batch of 512 rows costs
        ~15 ms of Python on a CPU core); the order does not depend on it, as every batch is a
        pure function of its step.
        """
        step = int(start_step)
        if prefetch <= 0:
            while True:
                yield self.batch(step)
                step += 1
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="train_batches") as pool:
            pending = collections.deque(pool.submit(self.batch, step + i) for i in range(prefetch))
            try:
                while True:
                    batch = pending.popleft().result()
                    step += 1
                    pending.append(pool.submit(self.batch, step + prefetch - 1))
                    yield batch
            finally:
                for future in pending:  # Closing the generator must not wait for unused work.
                    future.cancel()


def eval_batches(
    rows: dict[str, np.ndarray],
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int = 0,
) -> list[dict[str, np.ndarray]]:
    """This host's slices of the held-out rows in order, unshuffled, as full-shape batches.

    The last global batch is padded with all-zero rows (segment_ids 0, loss_mask 0, and zeros in
    any other field); max_batches > 0 keeps only the first that many batches.
    """
    local = _host_slice(int(global_batch_size), process_index, process_count)
    n = int(rows["tokens"].shape[0])
    count = -(-n // global_batch_size)
    if max_batches > 0:
        count = min(count, int(max_batches))
    batches = []
    for b in range(count):
        start = b * global_batch_size
        batch = {}
        for k in rows:
            full = np.zeros((global_batch_size,) + rows[k].shape[1:], rows[k].dtype)
            chunk = rows[k][start : start + global_batch_size]
            full[: len(chunk)] = chunk
            batch[k] = full[local]
        batches.append(_with_loss_mask(batch))
    return batches


def next_token_targets(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The tokens a causal LM is scored on: tokens[:, 1:] where the previous position is in the
    same (non-padding) segment, i.e. position t+1 predicted from t within a segment. The first
    token of each segment (a bos, or the first token of a continued document) is never a target.
    """
    seg = rows["segment_ids"]
    mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    return rows["tokens"][:, 1:][mask]


def unigram_perplexity(
    train_rows: dict[str, np.ndarray], eval_rows: dict[str, np.ndarray], vocab_size: int
) -> float:
    """Perplexity on the eval targets of the add-one-smoothed unigram model of the train targets.

    Targets as in `next_token_targets`; a model that beats this has learned some context.
    """
    train_targets = next_token_targets(train_rows)
    eval_targets = next_token_targets(eval_rows)
    if eval_targets.size == 0:
        raise ValueError("unigram_perplexity: no eval targets")
    if max(train_targets.max(initial=0), eval_targets.max(initial=0)) >= vocab_size:
        raise ValueError(f"unigram_perplexity: token ids exceed vocab_size={vocab_size}")
    counts = np.bincount(train_targets, minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    return float(np.exp(-log_probs[eval_targets].mean()))
