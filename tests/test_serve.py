"""`llmos serve` through the official `openai` client, in-process (httpx2.ASGITransport).

References: transformers' greedy generation, log-softmax and chat template on the same random
GPT-2 directory; every error case is followed by a request that must still succeed.
"""

import asyncio
import json
import time

import httpx2
import numpy as np
import openai
import pytest

from llmos_jax.serve import create_app
from tests import serve_helpers as H

GREEDY = {
    "temperature": 0.0,
    "extra_body": {"ignore_eos": True, "return_tokens_as_token_ids": True},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(app, engine, template, hf model, hf tokenizer) over one tiny GPT-2 directory."""
    path = tmp_path_factory.mktemp("gpt2")
    hf_model, hf_tok = H.save_gpt2_dir(path)
    engine, template = H.build_engine(path)
    # What `llmos serve` does first; every test below then also checks it leaves the slots as
    # they were. Slot buckets 1, 2, 4: prefill programs for prompts padded to 16, 32 and 64
    # tokens (up to the shortest decode context, 64) and a decode program each.
    assert engine.precompile() == 12
    engine.start()
    yield create_app(engine, template, H.MODEL), engine, template, hf_model, hf_tok
    engine.stop()


def _prompts(seed: int, lengths) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n).tolist() for n in lengths]


def test_models_endpoint(served):
    async def go():
        models = await H.asgi_client(served[0]).models.list()
        return [m.id for m in models.data]

    assert H.run_async(go()) == [H.MODEL]


def test_greedy_token_prompts_match_transformers(served):
    """Prompts of different lengths decoded together (each slot at its own cache index)."""
    app, _, _, hf_model, _ = served
    prompts = _prompts(0, (3, 11, 27, 40))

    async def go():
        client = H.asgi_client(app)
        return await asyncio.gather(
            *[
                client.completions.create(
                    model=H.MODEL, prompt=p, max_tokens=12, logprobs=0, **GREEDY
                )
                for p in prompts
            ]
        )

    for prompt, res in zip(prompts, H.run_async(go())):
        assert H.ids_of(res.choices[0].logprobs.tokens) == H.hf_greedy(hf_model, prompt, 12)
        assert res.choices[0].finish_reason == "length"
        assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (len(prompt), 12)


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_logprobs_match_transformers_log_softmax(served, max_tokens):
    """How evaluation harnesses score text: echo + logprobs of a token-id prompt."""
    app, _, _, hf_model, _ = served
    (prompt,) = _prompts(1, (20,))

    async def go():
        return await H.asgi_client(app).completions.create(
            model=H.MODEL, prompt=prompt, max_tokens=max_tokens, echo=True, logprobs=3, **GREEDY
        )

    lp = H.run_async(go()).choices[0].logprobs
    ids = H.ids_of(lp.tokens)
    assert ids[:20] == prompt and len(ids) == 20 + max_tokens
    ref = H.hf_log_softmax(hf_model, ids)  # position t predicts token t + 1
    want = [ref[t - 1, ids[t]] for t in range(1, len(ids))]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    np.testing.assert_allclose(lp.token_logprobs[1:], want, atol=2e-4)
    for t in range(1, len(ids)):
        top = sorted(lp.top_logprobs[t].items(), key=lambda kv: -kv[1])
        ref_top = np.argsort(-ref[t - 1])[:3]
        np.testing.assert_allclose([v for _, v in top], ref[t - 1, ref_top], atol=2e-4)
        assert [int(k.split(":")[1]) for k, _ in top] == ref_top.tolist()


def test_chat_template_stream_and_usage(served):
    app, _, template, hf_model, hf_tok = served
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "The for statement"},
    ]
    want_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert template.encode(messages) == want_ids  # same text, same special-token handling
    want = H.hf_greedy(hf_model, want_ids, 10)
    kw = dict(model=H.MODEL, messages=messages, max_tokens=10, **GREEDY)

    async def go():
        client = H.asgi_client(app)
        whole = await client.chat.completions.create(logprobs=True, **kw)
        stream = await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kw
        )
        chunks = [c async for c in stream]
        return whole, chunks

    whole, chunks = H.run_async(go())
    assert H.ids_of([t.token for t in whole.choices[0].logprobs.content]) == want
    assert whole.choices[0].message.content == hf_tok.decode(want)
    assert whole.usage.prompt_tokens == len(want_ids) and whole.usage.completion_tokens == 10
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_text_completion_stream_equals_whole_and_stop_strings(served):
    app = served[0]
    kw = dict(model=H.MODEL, prompt="The for statement", max_tokens=16, **GREEDY)

    async def go():
        client = H.asgi_client(app)
        whole = await client.completions.create(**kw)
        stream = await client.completions.create(
            stream=True, stream_options={"include_usage": True}, **kw
        )
        chunks = [c async for c in stream]
        text = whole.choices[0].text
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = await client.completions.create(stop=[stop, "\x00never"], **kw)
        stream = await client.completions.create(stop=stop, stream=True, **kw)
        stopped_chunks = [c async for c in stream]
        return whole, chunks, stop, stopped, stopped_chunks

    whole, chunks, stop, stopped, stopped_chunks = H.run_async(go())
    text = whole.choices[0].text
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 16 == whole.usage.completion_tokens
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in stopped_chunks) == text[: text.index(stop)]
    assert stopped_chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_reproducible_with_n_choices(served):
    app = served[0]
    kw = dict(model=H.MODEL, prompt="Exceptions are", max_tokens=8, temperature=1.0, n=3)

    async def go():
        client = H.asgi_client(app)
        runs = [await client.completions.create(seed=s, **kw) for s in (7, 7, 8)]
        return [[c.text for c in sorted(r.choices, key=lambda c: c.index)] for r in runs]

    first, again, other = H.run_async(go())
    assert first == again  # a seed fixes every choice, whatever else shares the batch
    assert len(set(first)) > 1 and first != other


def test_64_concurrent_streaming_clients(served):
    """More clients than slots: they share decode steps and take freed slots as they come."""
    app, engine, _, hf_model, _ = served
    variants = _prompts(2, (5, 9, 14, 20))
    refs = [H.hf_greedy(hf_model, p, 8) for p in variants]
    engine.stats.clear()

    async def one(client, i):
        stream = await client.completions.create(
            model=H.MODEL,
            prompt=variants[i % 4],
            max_tokens=8,
            logprobs=0,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
        tokens, usage = [], None
        async for chunk in stream:
            for c in chunk.choices:
                tokens += c.logprobs.tokens
            usage = chunk.usage or usage
        return H.ids_of(tokens), usage

    async def go():
        client = H.asgi_client(app)
        return await asyncio.gather(*[one(client, i) for i in range(64)])

    results = H.run_async(go())
    for i, (ids, usage) in enumerate(results):
        assert ids == refs[i % 4], i
        assert usage.completion_tokens == 8
    assert engine.stats["max_active"] == engine.config.max_batch  # batched, not one by one
    assert engine.stats["steps"] < 64 * 8 / 2
    assert engine.active_slots() == 0 and engine.pending() == 0


BAD_REQUESTS = [
    ("completions", {"prompt": [5] * 100, "max_tokens": 50}, 400, "128"),
    ("completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "temperature": 2.5}, 400, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "hi", "n": 9}, 400, "n must be"),
    ("completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("completions", {"prompt": [10**6]}, 400, "vocabulary"),
    ("completions", {"prompt": []}, 400, "prompt"),
    ("completions", {"prompt": "hi", "presence_penalty": 1.0}, 400, "presence_penalty"),
    ("completions", {"prompt": "hi", "model": "gpt-5"}, 404, "gpt-5"),
    ("completions", b"{not json", 400, "JSON"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x" * 600}]}, 400, "128"),
    ("chat/completions", {"messages": "hello"}, 400, "messages"),
]


@pytest.mark.parametrize("path,body,status,needle", BAD_REQUESTS)
def test_bad_requests_get_4xx_and_the_server_goes_on(served, path, body, status, needle):
    app = served[0]

    async def go():
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test"
        ) as http:
            if isinstance(body, bytes):
                headers = {"content-type": "application/json"}
                bad = await http.post(f"/v1/{path}", content=body, headers=headers)
            else:
                bad = await http.post(f"/v1/{path}", json={"model": H.MODEL, **body})
            good = await H.asgi_client(app).completions.create(
                model=H.MODEL, prompt="hi", max_tokens=2
            )
            return bad, good

    bad, good = H.run_async(go())
    assert bad.status_code == status, bad.text
    assert needle in bad.json()["error"]["message"]
    assert good.choices[0].finish_reason in ("length", "stop")


def test_context_error_names_the_numbers_through_the_client(served):
    async def go():
        with pytest.raises(openai.BadRequestError) as err:
            await H.asgi_client(served[0]).completions.create(
                model=H.MODEL, prompt=[5] * 100, max_tokens=50
            )
        return str(err.value)

    message = H.run_async(go())
    assert "maximum context length is 128" in message and "150" in message


def test_full_queue_answers_429_then_drains(served):
    app, engine, *_ = served
    engine.stop()  # nothing is admitted: requests pile up in the queue
    bound = engine.config.max_queue

    async def go():
        client = H.asgi_client(app)
        call = lambda: client.completions.create(model=H.MODEL, prompt="hi", max_tokens=1, **GREEDY)
        queued = [asyncio.create_task(call()) for _ in range(bound)]
        while engine.pending() < bound:
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError):
            await call()
        engine.start()
        done = await asyncio.gather(*queued)
        return done, await call()

    try:
        done, after = H.run_async(go())
    finally:
        engine.start()
    assert len(done) == bound and after.usage.completion_tokens == 1


def test_api_key(served):
    _, engine, template, *_ = served
    app = create_app(engine, template, H.MODEL, api_key="sekret")

    async def go():
        with pytest.raises(openai.AuthenticationError):
            await H.asgi_client(app, api_key="wrong").models.list()
        ok = await H.asgi_client(app, api_key="sekret").completions.create(
            model=H.MODEL, prompt="hi", max_tokens=2
        )
        return ok

    assert H.run_async(go()).usage.completion_tokens >= 1


def test_uvicorn_on_loopback_streams_and_disconnects_free_slots(served):
    _, engine, template, *_ = served
    with H.uvicorn_server(engine, template) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
        stream = client.chat.completions.create(
            model=H.MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            # Greedy and past EOS: a sampled EOS would end the stream early (it did, in CI).
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens == 4
        cancelled, tokens = engine.stats["cancelled"], engine.stats["tokens"]
        long = {
            "model": H.MODEL,
            "prompt": [5, 6, 7, 8],
            "max_tokens": 120,
            "stream": True,
            "ignore_eos": True,
        }
        with httpx2.Client(timeout=30) as http:
            with http.stream("POST", f"{url}/v1/completions", json=long) as resp:
                lines = resp.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert json.loads(first[5:])["choices"]
        # The connection is closed: the server cancels the request and frees its slot early.
        _wait_for(lambda: engine.active_slots() == 0 and engine.stats["cancelled"] > cancelled)
        assert engine.stats["tokens"] - tokens < 120
        # A client that gives up on a whole (non-streamed) response, here while it waits in the
        # queue: the server notices within DISCONNECT_POLL_S and cancels it before it runs.
        engine.stop()
        tokens = engine.stats["tokens"]
        try:
            with pytest.raises(httpx2.TimeoutException):
                httpx2.post(f"{url}/v1/completions", json={**long, "stream": False}, timeout=0.5)
            _wait_for(lambda: engine.pending() == 0)
        finally:
            engine.start()
        after = client.completions.create(model=H.MODEL, prompt="hi", max_tokens=3, **GREEDY)
        assert after.usage.completion_tokens == 3
        assert engine.stats["tokens"] - tokens == 3


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
