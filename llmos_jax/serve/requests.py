"""What a request to the serving engine is made of, and what comes back.

`SamplingParams` (what to generate), `RequestHandle` (a submitted request: its updates and a
way to cancel it), `Update` / `Delta` (what its choices produced since the last update) and
`QueueFull`. The engine (engine.py) fills handles from its thread; consumers read them on an
asyncio loop (the HTTP server) or a plain queue (the terminal chat, benchmarks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import random
from collections.abc import AsyncIterator, Iterator


class QueueFull(RuntimeError):
    """The engine's request queue is at its bound (HTTP 429)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the top k
    prompt_logprobs: int | None = None  # the same for the prompt tokens (completions' echo)
    ignore_eos: bool = False  # keep going past EOS (benchmarks)


@dataclasses.dataclass
class Delta:
    """What one choice produced since the last update."""

    index: int
    text: str
    token_ids: list[int]
    # One (token id, logprob, [(id, logprob), ...top]) per token, when logprobs were asked for.
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None
    finish_reason: str | None = None  # "stop" | "length" once the choice is done


@dataclasses.dataclass
class Update:
    deltas: list[Delta]
    # Once, first, if asked for: per prompt token (id, logprob, top); (id, None, None) for the
    # first token, which has nothing before it.
    prompt_logprobs: list | None = None
    done: bool = False  # every choice has finished
    error: str | None = None


def _merge(a: Update, b: Update) -> Update:
    """One update saying what a, then b, said."""
    merged = {d.index: dataclasses.replace(d, token_ids=list(d.token_ids)) for d in a.deltas}
    for d in b.deltas:
        m = merged.setdefault(d.index, dataclasses.replace(d, text="", token_ids=[], logprobs=None))
        m.text += d.text
        m.token_ids += d.token_ids
        if d.logprobs is not None:
            m.logprobs = [*(m.logprobs or []), *d.logprobs]
        m.finish_reason = d.finish_reason or m.finish_reason
    prompt = a.prompt_logprobs if a.prompt_logprobs is not None else b.prompt_logprobs
    return Update(list(merged.values()), prompt, b.done, b.error or a.error)


class RequestHandle:
    """One submitted request: its updates, in order, and a way to cancel it."""

    def __init__(self, prompt: list[int], params: SamplingParams, n: int, loop):
        self.prompt, self.params, self.n = prompt, params, n
        self.seed = params.seed if params.seed is not None else random.getrandbits(31)
        self.cancelled = False
        self.completion_tokens = 0
        self._loop = loop
        self._async_q: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._sync_q: queue.SimpleQueue | None = None if loop is not None else queue.SimpleQueue()

    def cancel(self) -> None:
        """Frees the request's slots at the engine's next iteration; no more updates come."""
        self.cancelled = True

    def _put(self, update: Update) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._async_q.put_nowait, update)
        else:
            self._sync_q.put(update)

    async def updates(self) -> AsyncIterator[Update]:
        """The updates in order; those that piled up while the consumer was busy (a slow client,
        a loaded machine) come merged into one, so the consumer catches up in one message."""
        while True:
            update = await self._async_q.get()
            while not (update.done or update.error) and not self._async_q.empty():
                update = _merge(update, self._async_q.get_nowait())
            yield update
            if update.done or update.error:
                return

    def iter_updates(self, timeout: float | None = None) -> Iterator[Update]:
        while True:
            update = self._sync_q.get(timeout=timeout)
            yield update
            if update.done or update.error:
                return
