"""Continuous batching over a fixed number of slots: the serving engine.

A background thread owns the model, the slot cache and every jitted call. Between two decode
steps it admits queued requests into free slots (one prefill for all of them), then runs one
decode step over every slot and hands each request the tokens, text and logprobs of that step.
A sequence frees its slot when it stops (EOS, a stop string, max_tokens) or its request is
cancelled (a client that went away), so the next queued request can take it.

Requests come from any thread: `submit` returns a `RequestHandle` whose updates arrive on an
asyncio loop (the HTTP server) or on a plain queue (the terminal chat, benchmarks). Nothing runs
before `start()`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llmos_jax.models import init_cache
from llmos_jax.serve import steps
from llmos_jax.serve.requests import (
    Delta,
    QueueFull,
    RequestHandle,
    SamplingParams,
    Update,
)
from llmos_jax.serve.text import Detokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8  # S: slots decoded together in one step
    max_len: int = 0  # M: tokens per slot (prompt + completion); 0 = the model's max_len
    max_queue: int = 256  # requests waiting for a slot; beyond it submit raises QueueFull
    max_n: int = 0  # choices per request (each takes a slot); 0 = max_batch
    min_bucket: int = 64  # smallest attention length of a decode step (bounds recompiles)
    # Smallest padded prompt. Prefill work grows with the padded length (a 31-token prompt padded
    # to 64 costs twice one padded to 32), so its buckets start lower than decode's.
    min_prefill_bucket: int = 16
    max_prefill_tokens: int = 1024  # prompt tokens admitted between two decode steps (>= 1 req)


def _bucket(n: int, lo: int, hi: int, factor: int = 2) -> int:
    """The smallest lo * factor**k >= n, capped at hi: padded shapes, so few compiled variants."""
    b = lo
    while b < n:
        b *= factor
    return min(b, hi)


@dataclasses.dataclass(eq=False)
class _Seq:
    """One choice of a request, living in one slot."""

    req: RequestHandle
    index: int
    slot: int
    length: int  # tokens in the cache
    last: int  # the token to feed next
    detok: Detokenizer
    steps: int = 0  # tokens sampled so far
    finished: bool = False


class Engine:
    """Slots, a cache [L, S, M, K, H] and the scheduler thread around `steps.prefill/decode`."""

    def __init__(self, model, params, tokenizer, config: EngineConfig = EngineConfig()):
        cfg = model.cfg
        # The same Decoder, reading its cache and returning new keys (see steps.py).
        self.model = model.clone(append_kv=True)
        self.tokenizer, self.config = tokenizer, config
        self.max_len = min(config.max_len or cfg.max_len, cfg.max_len)
        self.max_n = config.max_n or config.max_batch
        if not 1 <= self.max_n <= config.max_batch:
            raise ValueError(f"max_n={config.max_n} must be in [1, max_batch={config.max_batch}]")
        # One device: the engine's steps are small; sharding them would only add collectives.
        device = jax.devices()[0]
        self.params = jax.device_put(params, device)
        self._cache = jax.device_put(init_cache(cfg, config.max_batch, self.max_len), device)
        self._slots: list[_Seq | None] = [None] * config.max_batch
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.stats = collections.Counter()  # steps, tokens, prefills, max_active, ...

    # -- requests ---------------------------------------------------------------------------

    def validate(self, prompt: Sequence[int], max_tokens: int, n: int) -> None:
        """Raises ValueError (an HTTP 400) naming the numbers, for requests that cannot run."""
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = self.model.cfg.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if len(prompt) + max_tokens > self.max_len:
            raise ValueError(
                f"This model's maximum context length is {self.max_len} tokens. However, you "
                f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, "
                f"{max_tokens} in the completion). Please reduce the prompt or max_tokens."
            )
        if not 1 <= n <= self.max_n:
            raise ValueError(f"n must be in [1, {self.max_n}] on this server, got {n}")

    def submit(
        self, prompt: Sequence[int], params: SamplingParams, n: int = 1, loop=None
    ) -> RequestHandle:
        """Queues a request; updates go to `loop` (asyncio) or, without one, a plain queue."""
        prompt = [int(t) for t in prompt]
        self.validate(prompt, params.max_tokens, n)
        handle = RequestHandle(prompt, params, n, loop)
        with self._cond:
            if len(self._pending) >= self.config.max_queue:  # drop the cancelled, then decide
                self._pending = collections.deque(r for r in self._pending if not r.cancelled)
            if len(self._pending) >= self.config.max_queue:
                raise QueueFull(f"the request queue is full ({self.config.max_queue} waiting)")
            self._pending.append(handle)
            self._cond.notify()
        return handle

    def start(self) -> None:
        """Starts the scheduler thread (idempotent); until then, requests only queue up."""
        with self._cond:
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="llmos-engine", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the thread after its current step; queued and running requests stay, and go on
        after the next start()."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def precompile(self) -> int:
        """Compiles prefill for every row bucket and every prompt bucket up to the shortest
        decode context, and decode for every slot bucket at that context, so a crowd's first
        tokens do not wait on the compiler; longer prompts and contexts still compile on first
        use. Before start(); the slots' contents do not change (prefill rows all name slot S;
        decode only writes position 0 of idle slots, which a sequence writes before it reads).
        Returns the number of programs."""
        if self._thread is not None:
            raise RuntimeError("precompile() before start()")
        top = self.config.max_batch
        sizes = sorted({_bucket(n, 1, top) for n in range(1, top + 1)})
        kv_len = _bucket(1, self.config.min_bucket, self.max_len)
        p_lens = sorted({self._prompt_bucket(n) for n in range(1, kv_len + 1)})
        for rows in sizes:
            nowhere = jnp.full(rows, self.config.max_batch, jnp.int32)
            for p_len in p_lens:
                tokens = jnp.zeros((rows, p_len), jnp.int32)
                self._cache, _ = steps.prefill(
                    self.model,
                    self.params,
                    self._cache,
                    tokens,
                    tokens,
                    nowhere,
                    with_logprobs=False,
                )
            zeros = jnp.zeros(rows, jnp.int32)
            self._cache, next_tokens, _ = steps.decode(
                self.model,
                self.params,
                self._cache,
                *(zeros, zeros, zeros.astype(jnp.uint32), zeros, zeros),
                *(jnp.zeros(rows, jnp.float32), zeros, jnp.ones(rows, jnp.float32)),
                kv_len=kv_len,
                filtering=False,
            )
        jax.block_until_ready(next_tokens)
        return len(sizes) * (len(p_lens) + 1)

    def _prompt_bucket(self, n: int) -> int:
        return _bucket(n, min(self.config.min_prefill_bucket, self.max_len), self.max_len)

    def active_slots(self) -> int:
        return sum(s is not None for s in self._slots)

    def pending(self) -> int:
        """Requests waiting for a slot (cancelled ones not counted)."""
        return sum(not r.cancelled for r in list(self._pending))

    # -- the scheduler thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._pending and not self.active_slots():
                    self._cond.wait()
                if self._stop:
                    return
                admitted = self._admit()
            self._reap_cancelled()
            try:
                if admitted:
                    self._prefill(admitted)
                if self.active_slots():
                    self._decode()
            except Exception as e:  # a bug, not a bad request: fail what is running, keep serving
                log.exception("engine step failed")
                for seq in [s for s in self._slots if s is not None]:
                    self._free(seq)
                    seq.req._put(Update([], error=f"{type(e).__name__}: {e}"))

    def _admit(self) -> list[_Seq]:
        """Moves queued requests (oldest first) into the lowest free slots, all n choices or
        none, up to max_prefill_tokens of prompt per iteration (so running streams keep getting
        tokens while a crowd arrives)."""
        admitted: list[_Seq] = []
        free = [i for i, s in enumerate(self._slots) if s is None]
        budget = self.config.max_prefill_tokens
        while self._pending:
            req = self._pending[0]
            if req.cancelled:
                self._pending.popleft()
                self.stats["cancelled"] += 1
                continue
            cost = req.n * len(req.prompt)
            if req.n > len(free) or (admitted and cost > budget):
                break
            budget -= cost
            self._pending.popleft()
            for index in range(req.n):
                slot = free.pop(0)
                context = req.prompt[-4:]
                seq = _Seq(
                    req,
                    index,
                    slot,
                    len(req.prompt) - 1,
                    req.prompt[-1],
                    Detokenizer(self.tokenizer, context, req.params.stop),
                )
                self._slots[slot] = seq
                admitted.append(seq)
        active = self.active_slots()
        self.stats["max_active"] = max(self.stats["max_active"], active)
        return admitted

    def _free(self, seq: _Seq) -> None:
        seq.finished = True
        if self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None

    def _reap_cancelled(self) -> None:
        for seq in list(self._slots):
            if seq is not None and seq.req.cancelled:
                self._free(seq)
                self.stats["cancelled"] += 1

    def _prefill(self, seqs: list[_Seq]) -> None:
        """Writes prompt[:-1] of each new sequence into its slot (the last prompt token is the
        first decode step's input): all of them in one call, rows and length bucketed (padding
        rows write nowhere), so a crowd of arrivals costs one prefill, not one each."""
        todo = [q for q in seqs if q.length > 0]
        info = None
        if todo:
            rows = _bucket(len(todo), 1, self.config.max_batch)
            p_len = self._prompt_bucket(max(q.length for q in todo))
            tokens = np.zeros((rows, p_len), np.int32)
            targets = np.zeros((rows, p_len), np.int32)
            slots = np.full(rows, self.config.max_batch, np.int32)  # out of range: dropped
            for r, q in enumerate(todo):
                prompt = q.req.prompt
                tokens[r, : q.length], targets[r, : q.length] = prompt[:-1], prompt[1:]
                slots[r] = q.slot
            want_any = any(self._prompt_logprobs(q) is not None for q in todo)
            self._cache, info = steps.prefill(
                self.model,
                self.params,
                self._cache,
                jnp.asarray(tokens),
                jnp.asarray(targets),
                jnp.asarray(slots),
                with_logprobs=want_any,
            )
            info = None if info is None else [np.asarray(x) for x in info]
            self.stats["prefills"] += 1
            self.stats["prefill_rows"] += len(todo)
        row = {id(q): r for r, q in enumerate(todo)}
        for q in seqs:
            want = self._prompt_logprobs(q)
            if want is not None:
                prompt = q.req.prompt
                entries = [(prompt[0], None, None)]  # the first token has nothing before it
                if q.length > 0:
                    chosen, top_ids, top_lp = (x[row[id(q)]] for x in info)
                    entries += [
                        _entry(prompt[t + 1], chosen[t], top_ids[t], top_lp[t], want)
                        for t in range(q.length)
                    ]
                q.req._put(Update([], prompt_logprobs=entries))
            if q.req.params.max_tokens == 0:
                self._finish(q, "length", [])

    @staticmethod
    def _prompt_logprobs(q: _Seq) -> int | None:
        """k when q's request wants prompt logprobs and q sends them (its first choice only:
        the choices of a request share the prompt)."""
        return q.req.params.prompt_logprobs if q.index == 0 else None

    def _decode(self) -> None:
        live = [q for q in self._slots if q is not None]
        s = _bucket(max(q.slot for q in live) + 1, 1, self.config.max_batch)
        tokens, lengths, choices, n_steps, top_k = (np.zeros(s, np.int32) for _ in range(5))
        seeds, temp, top_p = np.zeros(s, np.uint32), np.zeros(s, np.float32), np.ones(s, np.float32)
        for q in live:
            p = q.req.params
            tokens[q.slot], lengths[q.slot], n_steps[q.slot] = q.last, q.length, q.steps
            seeds[q.slot], choices[q.slot] = q.req.seed % (1 << 32), q.index
            temp[q.slot], top_p[q.slot], top_k[q.slot] = p.temperature, p.top_p, max(p.top_k, 0)
        kv_len = _bucket(int(lengths.max()) + 1, self.config.min_bucket, self.max_len)
        self._cache, next_tokens, info = steps.decode(
            self.model,
            self.params,
            self._cache,
            *map(jnp.asarray, (tokens, lengths, seeds, choices, n_steps, temp, top_k, top_p)),
            kv_len=kv_len,
            filtering=bool(np.any((temp > 0) & ((top_k > 0) | (top_p < 1.0)))),
        )
        next_tokens = np.asarray(next_tokens)
        chosen, top_ids, top_lp = (np.asarray(x) for x in info)
        self.stats["steps"] += 1
        self.stats["tokens"] += len(live)
        per_request: dict[RequestHandle, list[Delta]] = {}
        for q in live:
            tok = int(next_tokens[q.slot])
            q.steps += 1
            q.length += 1
            q.last = tok
            q.req.completion_tokens += 1
            k = q.req.params.logprobs
            lp = None
            if k is not None:
                i = q.slot
                lp = _entry(tok, chosen[i], top_ids[i], top_lp[i], k)
            delta = self._advance(q, tok, lp)
            if delta is not None:
                per_request.setdefault(q.req, []).append(delta)
        for req, deltas in per_request.items():
            if not req.cancelled:
                req._put(Update(deltas, done=self._all_done(req)))

    def _advance(self, q: _Seq, tok: int, lp) -> Delta | None:
        """Folds a sampled token into its sequence; returns the delta to send."""
        p = q.req.params
        if tok == self.tokenizer.eos_id and not p.ignore_eos:
            return self._finish(q, "stop", [], q.detok.flush())
        text, stopped = q.detok.add(tok)
        lps = [lp] if lp is not None else None
        if stopped:
            return self._finish(q, "stop", [tok], text, lps)
        if q.steps >= p.max_tokens:
            return self._finish(q, "length", [tok], text + q.detok.flush(), lps)
        return Delta(q.index, text, [tok], lps)

    def _finish(self, q: _Seq, reason: str, ids: list[int], text: str = "", lps=None):
        self._free(q)
        delta = Delta(
            q.index, text, ids, lps if q.req.params.logprobs is not None else None, reason
        )
        if q.req.params.logprobs is not None and delta.logprobs is None:
            delta.logprobs = []
        if q.req.params.max_tokens == 0:  # never decoded: send it from here
            q.req._put(Update([delta], done=self._all_done(q.req)))
            return None
        return delta

    def _all_done(self, req: RequestHandle) -> bool:
        """Every choice of req has finished (its slots hold other requests or nothing)."""
        return not any(s is not None and s.req is req for s in self._slots) and not any(
            r is req for r in self._pending
        )


def _entry(token: int, logprob, top_ids, top_lps, k: int) -> tuple:
    """(token, logprob, [(id, logprob)] * k) with plain Python numbers."""
    top = [(int(i), float(v)) for i, v in zip(top_ids[:k], top_lps[:k])]
    return int(token), float(logprob), top
