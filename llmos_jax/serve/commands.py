"""`llmos serve` (the OpenAI-compatible server) and `llmos chat` (a terminal chat).

    llmos serve --workdir RUN_OR_HF_DIR [--port 8000] [--max-batch 8] [--api-key KEY]
    llmos chat --workdir RUN_OR_HF_DIR [--system "You are terse."] [--temperature 0.7]

Both take an llmos run directory or a Hugging Face GPT-2 / Llama directory, like `llmos generate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

CHAT_HELP = "type a message; /reset clears the conversation, /exit (or Ctrl-D) quits"


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="llmos run directory or Hugging Face model dir")
    p.add_argument("--max-batch", type=int, default=8, help="slots decoded together (S)")
    p.add_argument(
        "--max-len",
        type=int,
        default=0,
        help="tokens per slot, prompt + completion; 0 = the model's max_len",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        help="a Jinja file to use instead of the tokenizer's chat template",
    )


def add_parsers(sub) -> None:
    """Adds the `serve` and `chat` subcommands to the `llmos` parser."""
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat)")
    _engine_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-queue", type=int, default=256, help="waiting requests; then HTTP 429")
    s.add_argument("--max-n", type=int, default=0, help="choices per request; 0 = max-batch")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    s.add_argument("--model-name", default=None, help="the id in /v1/models (default: dir name)")
    c = sub.add_parser("chat", help="chat with a model in the terminal")
    _engine_args(c)
    c.add_argument("--system", default=None, help="a system message opening the conversation")
    c.add_argument("--max-tokens", type=int, default=256, help="per reply")
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    c.add_argument("--top-p", type=float, default=0.95)
    c.add_argument("--top-k", type=int, default=0)
    c.add_argument("--seed", type=int, default=None)


def build(args, overrides: list[str]):
    """(engine, chat template, run) for a run or Hugging Face directory."""
    from etils import epath

    from llmos_jax.config import ConfigError
    from llmos_jax.runs import load_run
    from llmos_jax.sampling import generation_mode
    from llmos_jax.serve import ChatTemplate, Engine, EngineConfig

    run = load_run(args.workdir, overrides)
    if generation_mode(run.config, args.command):
        raise ConfigError(
            f"objective.name={run.config.objective.name!r}: the serving engine reads prompts "
            f"causally, a prefix LM reads its prompt bidirectionally; sample from this run "
            f"with `llmos generate` instead"
        )
    config = EngineConfig(
        max_batch=args.max_batch,
        max_len=args.max_len,
        max_queue=getattr(args, "max_queue", 256),
        max_n=getattr(args, "max_n", 0),
    )
    engine = Engine(run.experiment.eval_model, run.params, run.tokenizer, config)
    tok_dir = run.config.data.tokenizer.path or run.workdir
    if args.chat_template:
        source = epath.Path(args.chat_template).read_text()
        template = ChatTemplate(run.tokenizer, source, tok_dir)
    else:
        template = ChatTemplate.for_tokenizer(run.tokenizer, tok_dir)
    return engine, template, run


def warmup(engine) -> None:
    """Compiles prefill and decode for every batch bucket (Engine.precompile), then runs one
    request end to end, before the first client waits on them."""
    from llmos_jax.serve import SamplingParams

    engine.precompile()
    engine.start()
    bos = engine.tokenizer.bos_id
    handle = engine.submit([bos, bos], SamplingParams(max_tokens=2, temperature=0.0))
    for _ in handle.iter_updates(timeout=600):
        pass


def serve(args, overrides: list[str]) -> int:
    import uvicorn
    from etils import epath

    from llmos_jax.serve.api import create_app

    engine, template, _ = build(args, overrides)
    name = args.model_name or epath.Path(args.workdir).name
    app = create_app(engine, template, name, args.api_key)
    print(f"llmos serve: compiling {name} (slots {args.max_batch}, context {engine.max_len})...")
    warmup(engine)
    where = "default transcript" if template.is_default else "the tokenizer's"
    print(f"chat template: {where}; OpenAI base_url http://{args.host}:{args.port}/v1")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
    return 0


def chat_loop(
    engine,
    template,
    params,
    read: Callable[[str], str],
    write: Callable[[str], None],
    system: str | None = None,
) -> list[dict]:
    """Reads user lines until /exit or EOF; each reply is generated from the whole history
    (oldest turns dropped when it outgrows the context) and written as it streams.
    Returns the final conversation."""
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            write("\n")
            break
        command = line.strip()
        if command == "/exit":
            break
        if command == "/reset":
            history = list(start)
            write("(conversation cleared)\n")
            continue
        if not command:
            continue
        history.append({"role": "user", "content": line})
        prompt = template.encode(history)
        while len(prompt) >= engine.max_len and len(history) > len(start) + 1:
            del history[len(start) : len(start) + 2]  # the oldest user/assistant exchange
            prompt = template.encode(history)
        room = engine.max_len - len(prompt)
        if room <= 0:
            write(f"(message too long: {len(prompt)} tokens, context {engine.max_len})\n")
            history.pop()
            continue
        turn = dataclasses.replace(
            params,
            max_tokens=min(params.max_tokens, room),
            stop=tuple(params.stop) + template.default_stop,
        )
        reply = []
        write("assistant> ")
        for update in engine.submit(prompt, turn).iter_updates(timeout=600):
            if update.error:
                write(f"(error: {update.error})")
            for delta in update.deltas:
                reply.append(delta.text)
                write(delta.text)
        write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
    return history


def chat(args, overrides: list[str]) -> int:
    from llmos_jax.serve import SamplingParams

    engine, template, _ = build(args, overrides)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    engine.start()
    print(CHAT_HELP)
    try:
        chat_loop(engine, template, params, input, write, args.system)
    finally:
        engine.stop()
    return 0
