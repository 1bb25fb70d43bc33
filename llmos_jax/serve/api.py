"""The OpenAI-compatible HTTP API (FastAPI) in front of an `Engine`.

GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET /health. Errors come back as
OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 for a request that cannot run
(validation, context length, template), 401 without the API key, 404 for another model's name,
429 when the queue is full. A client that goes away cancels its request and frees its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from llmos_jax.serve import protocol as P
from llmos_jax.serve.chat_template import ChatTemplate
from llmos_jax.serve.engine import Engine
from llmos_jax.serve.requests import QueueFull, RequestHandle, SamplingParams, Update
from llmos_jax.serve.text import token_text

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.1  # how often a waiting non-streamed request checks its client


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def _json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _sse(obj) -> str:
    return f"data: {_json(obj)}\n\n"


async def _merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, Update]]:
    """(handle index, update) from several handles as they come; cancels them all on exit."""
    if len(handles) == 1:  # the common case, without a task per handle
        try:
            async for update in handles[0].updates():
                yield 0, update
        finally:
            handles[0].cancel()
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        async for update in h.updates():
            await q.put((i, update))
        await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            i, update = await q.get()
            if update is None:
                remaining -= 1
            else:
                yield i, update
    finally:
        for h, t in zip(handles, tasks):
            h.cancel()
            t.cancel()


class _Server:
    """The route handlers' shared state: engine, template, model name."""

    def __init__(self, engine: Engine, template: ChatTemplate, model_name: str):
        self.engine, self.template, self.model_name = engine, template, model_name
        self.tok = engine.tokenizer
        self.token_str = lambda i: token_text(self.tok, i)

    def token_str_for(self, body: P._Sampling):
        """How this request's logprobs name tokens: their text, or "token_id:ID"."""
        return (lambda i: f"token_id:{i}") if body.return_tokens_as_token_ids else self.token_str

    def check_model(self, name: str | None) -> None:
        if name and name != self.model_name:
            raise ApiError(404, f"The model `{name}` does not exist.", "not_found_error", "model")

    def params(
        self,
        body: P._Sampling,
        max_tokens: int,
        logprobs,
        prompt_logprobs=None,
        extra_stop: tuple[str, ...] = (),
    ) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),
            seed=body.seed,
            stop=tuple(body.stop or ()) + extra_stop,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=body.ignore_eos,
        )

    def submit(self, prompts: list[list[int]], params: list[SamplingParams], n: int):
        for prompt, p in zip(prompts, params):  # all or nothing: check every prompt first
            try:
                self.engine.validate(prompt, p.max_tokens, n)
            except ValueError as e:
                raise ApiError(400, str(e)) from e
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []
        try:
            for prompt, p in zip(prompts, params):
                handles.append(self.engine.submit(prompt, p, n, loop))
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise ApiError(429, str(e), "rate_limit_error") from e
        return handles

    async def collect(self, handles: list[RequestHandle], request: Request) -> list[dict]:
        """Every choice of every handle, completed: {text, logprobs, finish_reason, prompt_lp}."""
        n = handles[0].n
        out = [
            {"text": "", "logprobs": [], "finish_reason": None, "prompt_lp": None}
            for _ in range(n * len(handles))
        ]

        async def run():
            async for i, update in _merged(handles):
                if update.error:
                    raise ApiError(500, update.error, "server_error")
                if update.prompt_logprobs is not None:
                    for j in range(n):
                        out[i * n + j]["prompt_lp"] = update.prompt_logprobs
                for d in update.deltas:
                    choice = out[i * n + d.index]
                    choice["text"] += d.text
                    choice["logprobs"].extend(d.logprobs or [])
                    choice["finish_reason"] = d.finish_reason or choice["finish_reason"]

        task = asyncio.ensure_future(run())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await request.is_disconnected():
                    # Nobody to answer; _merged's cleanup cancels the handles, freeing the slots.
                    raise ApiError(499, "the client closed the connection")
            task.result()  # re-raises what run() raised
            return out
        finally:
            if not task.done():
                task.cancel()

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):  # as `llmos generate`: BOS, then the text
            return [self.tok.bos_id, *self.tok.encode(prompt)]
        return list(prompt)

    def chunk(
        self,
        kind: str,
        rid: str,
        created: int,
        choices: list,
        usage=None,
        include_usage: bool = False,
    ) -> str:
        obj = {
            "id": rid,
            "object": kind,
            "created": created,
            "model": self.model_name,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        return _sse(obj)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(
    engine: Engine, template: ChatTemplate, model_name: str, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app. Its lifespan starts and stops the engine's thread; a host that runs no
    lifespan (httpx2.ASGITransport) calls engine.start() itself."""
    from llmos_jax.serve import routes

    server = _Server(engine, template, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="llmos serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {api_key}":
            raise ApiError(401, "Incorrect API key provided.", "authentication_error")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(P.error_body(exc.message, exc.kind, exc.param), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(P.error_body(_validation_message(exc)), 400)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": engine.active_slots(), "pending": engine.pending()}

    routes.add_routes(app, server, Depends(check_key))
    return app
