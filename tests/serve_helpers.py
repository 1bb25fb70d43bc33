"""Shared pieces of the serving tests: tiny random Hugging Face models saved offline, an engine
over them, and the official `openai` client routed in-process (httpx2.ASGITransport) or to a
uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import threading
import time

import httpx2
import numpy as np
import openai
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmos_jax.runs import load_run
from llmos_jax.serve import ChatTemplate, Engine, EngineConfig, create_app
from tests import hf_reference as ref

MODEL = "tiny"
CONTEXT = 128
# A template in the Hugging Face style: writes the BOS token's text itself.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:{% endif %}"
)
TIMEOUT_S = 120  # bound on any one test's client calls


def save_gpt2_dir(path: pathlib.Path, template: str | None = TEMPLATE) -> tuple:
    """A GPT-2 directory (byte-level tokenizer.json, random weights, context CONTEXT) and its
    transformers model and tokenizer, the references."""
    tok = ref.save_gpt2_tokenizer(path)
    if template is not None:
        tok.chat_template = template
        tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=ref.GPT2_VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=CONTEXT,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = ref.randomize(GPT2LMHeadModel(cfg), 1)
    model.save_pretrained(path)
    return model, ref.auto_tokenizer(path)


def build_engine(path, **config) -> tuple[Engine, ChatTemplate]:
    run = load_run(str(path))
    config = {"max_batch": 4, "max_queue": 64, **config}
    engine = Engine(run.experiment.eval_model, run.params, run.tokenizer, EngineConfig(**config))
    return engine, ChatTemplate.for_tokenizer(run.tokenizer, str(path))


def asgi_client(app, **kw) -> openai.AsyncOpenAI:
    """The official client, talking to `app` in-process (must be made inside the event loop)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    kw = {"api_key": "unused", "max_retries": 0, "timeout": TIMEOUT_S, **kw}
    return openai.AsyncOpenAI(base_url="http://test/v1", http_client=http, **kw)


def run_async(coro):
    """Runs a test coroutine on a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S))


def hf_greedy(model, prompt: list[int], n: int, eos_id: int | None = None) -> list[int]:
    """transformers' greedy continuation, the reference for our decoding: n tokens, or up to and
    without eos_id. The attention mask is explicit: generate would otherwise mask the prompt
    tokens that equal pad_token_id."""
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = eos_id
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    new = out[0, len(prompt) :].tolist()
    return new[: new.index(eos_id)] if eos_id in new else new


def hf_log_softmax(model, prompt: list[int]) -> np.ndarray:
    """[T, V] log-probabilities of the next token at every prompt position, by transformers."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def ids_of(tokens: list[str]) -> list[int]:
    """Token ids back from `return_tokens_as_token_ids` strings ("token_id:123")."""
    return [int(t.split(":")[1]) for t in tokens]


@contextlib.contextmanager
def uvicorn_server(engine, template, **app_kw):
    """A real uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL. The app's
    lifespan is off: the engine belongs to the caller."""
    import uvicorn

    app = create_app(engine, template, MODEL, **app_kw)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
