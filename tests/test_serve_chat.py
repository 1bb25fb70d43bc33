"""`llmos chat` and `llmos serve` from the command line, chat templates, streaming text.

References: transformers' chat template and greedy generation on Hugging Face directories (one
with a byte-level tokenizer.json and a template, one with an llmos SentencePiece tokenizer and
none: the documented default transcript).
"""

import asyncio
import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from llmos_jax import cli, interop
from llmos_jax.data import train_tokenizer
from llmos_jax.serve import ChatTemplate, SamplingParams
from llmos_jax.serve.chat_template import ChatTemplateError
from llmos_jax.serve.text import Detokenizer
from tests import hf_reference as ref
from tests import serve_helpers as H

GREEDY = {
    "temperature": 0.0,
    "extra_body": {"ignore_eos": True, "return_tokens_as_token_ids": True},
}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    return path, *H.save_gpt2_dir(path)


def _replies(out: str) -> list[str]:
    """The assistant's replies in a transcript printed by `llmos chat`."""
    parts = out.split("assistant> ")[1:]  # replies may hold any character, newlines included
    return [p.removesuffix("(conversation cleared)\n").removesuffix("\n") for p in parts]


def test_chat_cli_remembers_the_conversation_and_resets(gpt2, monkeypatch, capsys):
    path, hf_model, hf_tok = gpt2
    lines = iter(["The for statement", "Exceptions are raised", "/reset", "A class", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    args = [
        "chat",
        "--workdir",
        path,
        "--temperature",
        "0",
        "--max-tokens",
        "6",
        "--max-batch",
        "2",
    ]
    assert cli.main([str(a) for a in args]) == 0
    got = _replies(capsys.readouterr().out)

    def reply(messages):  # transformers: the whole history through the template, greedy
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        return hf_tok.decode(H.hf_greedy(hf_model, ids, 6, hf_tok.eos_token_id))

    u = lambda text: {"role": "user", "content": text}
    first = reply([u("The for statement")])
    second = reply(
        [
            u("The for statement"),
            {"role": "assistant", "content": first},
            u("Exceptions are raised"),
        ]
    )
    assert got == [first, second, reply([u("A class")])]


def test_serve_cli_builds_the_app_and_answers(gpt2, monkeypatch):
    """`llmos serve` wiring: the app it hands uvicorn answers through the openai client."""
    path, hf_model, _ = gpt2
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.update(app=app, **kw))
    args = [
        "serve",
        "--workdir",
        str(path),
        "--port",
        "8123",
        "--max-batch",
        "2",
        "--model-name",
        "m",
    ]
    assert cli.main(args) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    app, engine = served["app"], served["app"].state.server.engine
    engine.start()  # serve stopped it when (the patched) uvicorn returned

    async def go():
        return await H.asgi_client(app).completions.create(
            model="m", prompt=[7, 8, 9], max_tokens=5, logprobs=0, **GREEDY
        )

    try:
        res = H.run_async(go())
    finally:
        engine.stop()
    assert H.ids_of(res.choices[0].logprobs.tokens) == H.hf_greedy(hf_model, [7, 8, 9], 5)


def test_sentencepiece_model_default_template(tmp_path):
    """A model with an llmos SentencePiece tokenizer and no template (as `make demo` trains): the
    default transcript after BOS, and replies that are transformers' greedy continuation, cut
    at the next 'User:'."""
    tok = train_tokenizer([ref.TEXT * 3], 300)
    tok.save(tmp_path / "tokenizer.model")
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size + 64,  # padded past the tokenizer, as models often are
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    )
    hf_model = ref.randomize(LlamaForCausalLM(cfg), seed=3, scale=0.3)
    hf_model.save_pretrained(tmp_path)
    engine, template = H.build_engine(tmp_path, max_batch=2)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = template.encode(messages)
    assert template.is_default
    assert ids == [tok.bos_id, *tok.encode("System: Be brief.\nUser: Hi\nAssistant:")]
    engine.start()
    try:
        greedy = SamplingParams(max_tokens=20, temperature=0.0, stop=template.default_stop)
        updates = list(engine.submit(ids, greedy).iter_updates(timeout=H.TIMEOUT_S))
        # Ids the tokenizer has no piece for (the model's padded vocabulary) decode to nothing.
        beyond = SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=1)
        extra = list(engine.submit([2, tok.vocab_size + 5], beyond).iter_updates(H.TIMEOUT_S))
        assert not any(u.error for u in extra) and extra[-1].done
    finally:
        engine.stop()
    text = "".join(d.text for u in updates for d in u.deltas)
    assert not any(u.error for u in updates)
    want = H.hf_greedy(hf_model, ids, 20, tok.eos_id)
    # Decoded after a few prompt tokens (SentencePiece drops a text's leading space otherwise),
    # without the ids past the tokenizer's vocabulary (they have no text).
    context = tok.decode(ids[-4:])
    want_text = tok.decode([i for i in ids[-4:] + want if i < tok.vocab_size])[len(context) :]
    assert text == want_text.split("\nUser:")[0]


def test_template_sources_and_errors(gpt2, tmp_path):
    path, _, hf_tok = gpt2
    tok = interop.load_tokenizer(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    own = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    for stored in (own, [{"name": "default", "template": own}, {"name": "rag", "template": "x"}]):
        stored_config = {**config, "chat_template": stored}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(stored_config))
        template = ChatTemplate.for_tokenizer(tok, str(tmp_path))
        assert template.render([{"role": "user", "content": "hi"}]) == "<user>hi"
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="user first"):
        ChatTemplate(tok, strict).encode([{"role": "assistant", "content": "x"}])
    # The GPT-2 directory's own template (chat_template.jinja, as transformers 5 saves it).
    assert ChatTemplate.for_tokenizer(tok, str(path)).source == hf_tok.chat_template


class _Letters:
    """A toy tokenizer: id i is PIECES[i]; 99 is the first half of "é", which only a following 98
    completes (as byte-fallback tokens split a UTF-8 character)."""

    PIECES = ["a", "b", " ", "U", "s", "e", "r", ":", "\n"]
    vocab_size = 100

    def decode(self, ids):
        out = []
        for j, i in enumerate(ids):
            if i == 99:
                out.append("é" if ids[j + 1 : j + 2] == [98] else "\ufffd")
            elif i != 98:
                out.append(self.PIECES[i])
        return "".join(out)


def test_detokenizer_holds_back_partial_stop_strings():
    tok = _Letters()
    d = Detokenizer(tok, [], ("\nUser:",))
    pieces = [d.add(i) for i in (0, 1, 8, 3, 4)]  # "ab" then "\nUs": could be the stop string
    assert pieces == [("a", False), ("b", False), ("", False), ("", False), ("", False)]
    assert d.add(5) == ("", False) and d.add(6) == ("", False)
    assert d.add(7) == ("", True)  # "\nUser:" complete: cut, nothing of it sent
    d = Detokenizer(tok, [], ("\nUser:",))
    assert [d.add(i)[0] for i in (0, 8, 3, 1)] == ["a", "", "", "\nUb"]  # not a stop after all
    d = Detokenizer(tok, [], ())
    assert d.add(0) == ("a", False) and d.add(99) == ("", False) and d.add(98) == ("é", False)
    assert d.add(99) == ("", False) and d.flush() == "\ufffd"  # the end: whatever is there


def test_requests_share_steps_in_one_event_loop(gpt2):
    """Two async submitters on one loop, staggered: the second joins between decode steps."""
    path, hf_model, _ = gpt2
    engine, _ = H.build_engine(path, max_batch=2)
    engine.start()
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)

    async def one(prompt, delay):
        await asyncio.sleep(delay)
        handle = engine.submit(prompt, greedy, loop=asyncio.get_running_loop())
        return [t async for u in handle.updates() for d in u.deltas for t in d.token_ids]

    async def go():
        return await asyncio.gather(one([5, 6, 7, 8, 9], 0), one([40, 41], 0.05))

    try:
        a, b = H.run_async(go())
    finally:
        engine.stop()
    assert a == H.hf_greedy(hf_model, [5, 6, 7, 8, 9], 10)
    assert b == H.hf_greedy(hf_model, [40, 41], 10)


@pytest.mark.parametrize("filtering", [False, True])
def test_inverse_cdf_sampling_matches_the_distribution(filtering):
    """The engine's sampler draws tokens with softmax(logits / T) probabilities (after top-p when
    filtering), like `sample_logits`; each row uses only its own key."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llmos_jax.serve.steps import sample

    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    n = 10000
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 1))
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    temperature, top_p = jnp.full((n,), 0.5), jnp.full((n,), 0.7 if filtering else 1.0)
    draws = jax.jit(sample, static_argnames="filtering")(
        logits, keys, temperature, jnp.zeros((n,), jnp.int32), top_p, filtering=filtering
    )
    freq = np.bincount(np.asarray(draws), minlength=6) / n
    ref_p = probs**2 / (probs**2).sum()  # temperature 0.5 squares the probabilities
    if filtering:  # top-p 0.7 of the tempered (0.61, 0.24, 0.09, ...): mass before < 0.7
        ref_p = np.where(np.arange(6) < 2, ref_p, 0) / ref_p[:2].sum()
    np.testing.assert_allclose(freq, ref_p, atol=0.02)
    again = jax.jit(sample, static_argnames="filtering")(
        logits[:5],
        keys[:5],
        temperature[:5],
        jnp.zeros((5,), jnp.int32),
        top_p[:5],
        filtering=filtering,
    )
    np.testing.assert_array_equal(again, draws[:5])  # a row's draw depends on its key alone


def test_updates_that_pile_up_arrive_merged():
    """A consumer that fell behind gets one update saying what the queued ones said, in order."""
    from llmos_jax.serve.requests import Delta, RequestHandle, Update

    async def go():
        handle = RequestHandle([1], SamplingParams(), 2, asyncio.get_running_loop())
        handle._put(Update([], prompt_logprobs=[(1, None, None)]))
        handle._put(Update([Delta(0, "a", [5], [(5, -1.0, [])]), Delta(1, "x", [7], None)]))
        handle._put(Update([Delta(0, "b", [6], [(6, -2.0, [])], "length")]))
        handle._put(Update([Delta(1, "y", [8], None, "stop")], done=True))
        await asyncio.sleep(0.01)  # all four are queued before the consumer looks
        return [u async for u in handle.updates()]

    (update,) = H.run_async(go())
    assert update.done and update.prompt_logprobs == [(1, None, None)]
    a, b = update.deltas
    assert (a.index, a.text, a.token_ids, a.finish_reason) == (0, "ab", [5, 6], "length")
    assert a.logprobs == [(5, -1.0, []), (6, -2.0, [])]
    assert (b.index, b.text, b.token_ids, b.finish_reason) == (1, "xy", [7, 8], "stop")


@pytest.mark.parametrize("objective,needle", [("prefix_lm", "llmos generate"), ("mlm", "mlm")])
def test_serve_refuses_models_it_cannot_decode(gpt2, capsys, objective, needle):
    """A prefix LM reads its prompt bidirectionally (the engine reads causally) and an MLM
    encoder does not generate: a config error before any server starts."""
    path = gpt2[0]
    args = ["serve", "--workdir", str(path), f"--config.objective.name={objective}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: objective.name=") and needle in err
