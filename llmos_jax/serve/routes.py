"""The /v1 routes: models, completions and chat completions, streamed (SSE) or whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llmos_jax.serve import protocol as P
from llmos_jax.serve.api import ApiError, _merged, _Server, _sse
from llmos_jax.serve.chat_template import ChatTemplateError
from llmos_jax.serve.requests import RequestHandle
from llmos_jax.serve.text import decode

DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _usage(prompts: list[list[int]], handles: list[RequestHandle]) -> dict:
    return P.usage(sum(map(len, prompts)), sum(h.completion_tokens for h in handles))


def _error_event(message: str) -> str:
    return _sse(P.error_body(message, "server_error"))


def add_routes(app: FastAPI, s: _Server, auth) -> None:
    engine = s.engine

    @app.get("/v1/models", dependencies=[auth])
    async def models():
        card = {
            "id": s.model_name,
            "object": "model",
            "created": P.now(),
            "owned_by": "llmos",
            "max_model_len": engine.max_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: P.CompletionRequest, request: Request):
        s.check_model(body.model)
        try:
            raw = body.prompts()
            prompts = [s.encode_prompt(p) for p in raw]
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from e
        want_lp = body.logprobs
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        params = s.params(body, max_tokens, want_lp, want_lp if body.echo else None)
        handles = s.submit(prompts, [params] * len(prompts), body.n)
        echo_text = [p if isinstance(p, str) else decode(s.tok, p) for p in raw]
        rid, created, n = P.new_id("cmpl"), P.now(), body.n
        if body.stream:
            stream = _stream_completions(s, body, handles, prompts, echo_text, rid, created)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        out = await s.collect(handles, request)
        choices = []
        for k, c in enumerate(out):
            entries = (c["prompt_lp"] or []) if body.echo else []
            entries = entries + c["logprobs"]
            prefix = echo_text[k // n] if body.echo else ""
            lp = None
            if want_lp is not None:
                lp = P.completion_logprobs(entries, s.token_str_for(body), 0)
            choices.append(
                {
                    "index": k,
                    "text": prefix + c["text"],
                    "logprobs": lp,
                    "finish_reason": c["finish_reason"],
                }
            )
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": s.model_name,
            "choices": choices,
            "usage": _usage(prompts, handles),
        }

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat(body: P.ChatCompletionRequest, request: Request):
        s.check_model(body.model)
        try:
            prompt = s.template.encode([m.as_template_input() for m in body.messages])
        except ChatTemplateError as e:
            raise ApiError(400, str(e), param="messages") from e
        max_tokens = body.completion_limit
        if max_tokens is None:  # as OpenAI: whatever room the context has left
            max_tokens = max(engine.max_len - len(prompt), 0)
            if max_tokens == 0:
                msg = f"the messages take {len(prompt)} tokens, the context is {engine.max_len}"
                raise ApiError(400, msg, param="messages")
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = s.params(body, max_tokens, top, extra_stop=s.template.default_stop)
        handles = s.submit([prompt], [params], body.n)
        rid, created = P.new_id("chatcmpl"), P.now()
        if body.stream:
            stream = _stream_chat(s, body, handles, [prompt], rid, created)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        out = await s.collect(handles, request)
        choices = [
            {
                "index": k,
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": None
                if top is None
                else {"content": P.chat_logprobs(c["logprobs"], s.token_str_for(body))},
                "finish_reason": c["finish_reason"],
            }
            for k, c in enumerate(out)
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": s.model_name,
            "choices": choices,
            "usage": _usage([prompt], handles),
        }


async def _stream_completions(
    s: _Server, body, handles, prompts, echo_text, rid, created
) -> AsyncIterator[str]:
    n, want_lp, usage_on = body.n, body.logprobs, body.include_usage
    token_str = s.token_str_for(body)
    offsets = [0] * (n * len(handles))

    def choice(k: int, text: str, entries, finish=None) -> dict:
        lp = None
        if want_lp is not None:
            lp = P.completion_logprobs(entries or [], token_str, offsets[k])
            if lp["tokens"]:
                offsets[k] = lp["text_offset"][-1] + len(lp["tokens"][-1])
        return {"index": k, "text": text, "logprobs": lp, "finish_reason": finish}

    def emit(choices):
        return s.chunk("text_completion", rid, created, choices, None, usage_on)

    try:  # a client gone at any yield cancels its requests
        if body.echo and want_lp is None:  # the prompt's text first; nothing to wait for
            yield emit([choice(k, echo_text[k // n], None) for k in range(len(offsets))])
        async for i, update in _merged(handles):
            if update.error:
                yield _error_event(update.error)
                return
            choices = []
            if body.echo and update.prompt_logprobs is not None:
                for j in range(n):
                    choices.append(choice(i * n + j, echo_text[i], update.prompt_logprobs))
            for d in update.deltas:
                if d.text or d.logprobs or d.finish_reason:  # else: text held back, no news
                    choices.append(choice(i * n + d.index, d.text, d.logprobs, d.finish_reason))
            if choices:
                yield emit(choices)
        if usage_on:
            yield s.chunk("text_completion", rid, created, [], _usage(prompts, handles), True)
        yield DONE
    finally:
        for h in handles:
            h.cancel()


async def _stream_chat(s: _Server, body, handles, prompts, rid, created) -> AsyncIterator[str]:
    want_lp, usage_on = body.logprobs, body.include_usage
    token_str = s.token_str_for(body)

    def emit(choices):
        return s.chunk("chat.completion.chunk", rid, created, choices, None, usage_on)

    first = {"role": "assistant", "content": ""}
    try:  # a client gone at any yield cancels its requests
        yield emit(
            [
                {"index": k, "delta": first, "logprobs": None, "finish_reason": None}
                for k in range(body.n)
            ]
        )
        async for _, update in _merged(handles):
            if update.error:
                yield _error_event(update.error)
                return
            choices = []
            for d in update.deltas:
                if not (d.text or d.logprobs or d.finish_reason):  # text held back, no news
                    continue
                lp = None
                if want_lp:
                    lp = {"content": P.chat_logprobs(d.logprobs or [], token_str)}
                delta = {"content": d.text} if d.text or not d.finish_reason else {}
                choices.append(
                    {
                        "index": d.index,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": d.finish_reason,
                    }
                )
            if choices:
                yield emit(choices)
        if usage_on:
            yield s.chunk("chat.completion.chunk", rid, created, [], _usage(prompts, handles), True)
        yield DONE
    finally:
        for h in handles:
            h.cancel()
