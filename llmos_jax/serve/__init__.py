"""Serving: an OpenAI-compatible HTTP server and a terminal chat over a continuous-batching engine.

* `engine`: `Engine` (slots, KV cache, scheduler thread).
* `requests`: `SamplingParams`, `RequestHandle`, `Update` / `Delta`, `QueueFull`.
* `steps`: the engine's jitted prefill and decode step.
* `chat_template`: messages -> prompt ids through the model's Jinja template (or a default).
* `api` / `routes` / `protocol`: the FastAPI app (`create_app`), its routes and request models.
* `commands`: `llmos serve` and `llmos chat`.

The names below load on first use, so `llmos --help` (which builds the serve/chat parsers) does
not import JAX or FastAPI.
"""

import importlib

_EXPORTS = {
    "ChatTemplate": "chat_template",
    "Engine": "engine",
    "EngineConfig": "engine",
    "QueueFull": "requests",
    "RequestHandle": "requests",
    "SamplingParams": "requests",
    "create_app": "api",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"llmos_jax.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'llmos_jax.serve' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
