"""KV-cache decoding equals recomputing the full forward pass; sampling filters are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.config import ConfigError, load_config
from llmos_jax.models import attention_mask, build_model
from llmos_jax.objectives.prefix_lm import prefix_lm_mask
from llmos_jax.sampling import SampleOptions, generate, generation_mode, sample_logits
from tests.helpers import init_params, tiny_config


def _full_forward(model, params):
    """Logits of a whole [1, T] sequence, recomputed without a cache: the reference. Jitted:
    eagerly, the scanned model dispatches (and compiles) op by op at every length."""
    return jax.jit(
        lambda x: model.apply(
            {"params": params}, x, jnp.arange(x.shape[1])[None], attention_mask(jnp.ones_like(x))
        )[0]
    )


@pytest.mark.quick_compile  # a dozen decode steps: compile time dominates
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_kv_cache_decoding_equals_full_forward(family):
    c = tiny_config(family)
    model = build_model(c)
    # Larger weights make the distributions peaked, so a cache bug would change sampled tokens.
    params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(model))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14]]  # different lengths: left padding
    outs, step_logits = generate(
        model,
        params,
        prompts,
        eos_id=3,
        rng=jax.random.PRNGKey(1),
        options=SampleOptions(max_new_tokens=12, temperature=1.0),
        return_logits=True,
    )
    assert any(len(o) > 4 for o in outs)
    forward = _full_forward(model, params)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        ref = forward(jnp.asarray(prompt + out)[None])
        ref = np.asarray(ref[0, len(prompt) - 1 : len(prompt) - 1 + len(out)])
        got = step_logits[i, : len(out)]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.quick_compile  # one compile per length
def test_greedy_equals_argmax_of_full_forward_and_stops_at_eos():
    c = tiny_config("llama")
    model = build_model(c)
    params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(model, seed=3))
    prompt = [7, 8, 9]
    seq = list(prompt)
    forward = _full_forward(model, params)
    for _ in range(6):  # reference: greedy by recomputing everything each step
        seq.append(int(jnp.argmax(forward(jnp.asarray(seq)[None])[0, -1])))
    ref = seq[len(prompt) :]
    (out,) = generate(
        model,
        params,
        [prompt],
        eos_id=127,
        rng=jax.random.PRNGKey(0),
        options=SampleOptions(max_new_tokens=6, temperature=0.0),
    )
    assert out == ref
    eos = ref[2]
    (cut,) = generate(
        model,
        params,
        [prompt],
        eos_id=eos,
        rng=jax.random.PRNGKey(0),
        options=SampleOptions(max_new_tokens=6, temperature=0.0),
    )
    assert cut == ref[: ref.index(eos)]


@pytest.mark.quick_compile
def test_prefix_lm_generation_reads_the_prompt_bidirectionally():
    """A prefix LM's prompt is its prefix: every prompt token sees the whole prompt, the new
    tokens see what came before them. Each sampled token's logits equal a full forward pass
    under the prefix-LM training mask (objectives/prefix_lm.py) with the prompt as the prefix;
    prompts of different lengths (left padding) in one batch."""
    c = tiny_config("llama")
    model = build_model(c)
    params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(model, seed=4))
    prompts = [[5, 6, 7, 8, 9, 10], [12, 13, 14]]
    kw = dict(eos_id=3, rng=jax.random.PRNGKey(2), return_logits=True)
    opts = SampleOptions(max_new_tokens=5, temperature=1.0)
    outs, step_logits = generate(
        model, params, prompts, options=opts, **kw, bidirectional_prompt=True
    )

    @jax.jit
    def forward(x, is_prefix):
        mask = prefix_lm_mask(jnp.ones_like(x), is_prefix)
        return model.apply({"params": params}, x, jnp.arange(x.shape[1])[None], mask)[0]

    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        seq = jnp.asarray(prompt + out)[None]
        ref = forward(seq, jnp.arange(seq.shape[1])[None] < len(prompt))
        ref = np.asarray(ref[0, len(prompt) - 1 : len(prompt) - 1 + len(out)])
        np.testing.assert_allclose(step_logits[i, : len(out)], ref, rtol=1e-4, atol=1e-4 * 8)
    # The same prompts read causally give other first-step logits: the mode matters.
    _, causal_logits = generate(model, params, prompts, options=opts, **kw)
    assert np.abs(np.asarray(causal_logits[:, 0]) - np.asarray(step_logits[:, 0])).max() > 1e-2


def test_only_decoders_of_generative_objectives_generate():
    """`llmos generate` reads a clm prompt causally and a prefix LM's bidirectionally; runs of
    the other objectives are a config error naming the objective (not garbage samples)."""
    assert generation_mode(load_config("configs/clm/tiny.py")) is False
    assert generation_mode(load_config("configs/prefix_lm/tiny.py")) is True
    for objective in ("mlm", "span", "plm", "simcse", "clip"):
        config = load_config(f"configs/{objective}/tiny.py")
        with pytest.raises(ConfigError, match=f"objective.name='{config.objective.name}'"):
            generation_mode(config)


def _empirical(logits, n, **kw):
    b = logits.shape[0]
    opts = {k: jnp.full((b,), v) for k, v in kw.items()}
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    draws = jax.vmap(
        lambda k: sample_logits(
            logits, k, opts["temperature"], opts["top_k"].astype(jnp.int32), opts["top_p"]
        )
    )(keys)
    return np.bincount(np.asarray(draws[:, 0]), minlength=logits.shape[1]) / n


def test_top_k_and_top_p_match_numpy_filters():
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
    # top-k 3: renormalised mass of the three most likely tokens.
    freq = _empirical(logits, 20000, temperature=1.0, top_k=3, top_p=1.0)
    ref = np.where(np.arange(6) < 3, probs, 0) / probs[:3].sum()
    np.testing.assert_allclose(freq, ref, atol=0.015)
    # top-p 0.7: tokens whose preceding mass < 0.7 -> {0.4, 0.25, 0.15} (0.65 before the third).
    freq = _empirical(logits, 20000, temperature=1.0, top_k=0, top_p=0.7)
    np.testing.assert_allclose(freq, ref, atol=0.015)
    # temperature 0.5 squares the probabilities (before renormalising).
    freq = _empirical(logits, 20000, temperature=0.5, top_k=0, top_p=1.0)
    np.testing.assert_allclose(freq, probs**2 / (probs**2).sum(), atol=0.015)


def test_prompt_too_long_for_learned_positions_is_a_clear_error():
    c = tiny_config("gpt2")
    model = build_model(c)
    params = init_params(model)
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        generate(
            model,
            params,
            [[5] * 60],
            eos_id=3,
            rng=jax.random.PRNGKey(0),
            options=SampleOptions(max_new_tokens=10),
        )


@pytest.mark.quick_compile
@pytest.mark.parametrize("family", ["llama", "gpt2"])  # llama: grouped-query attention
def test_serving_steps_equal_full_forward(family):
    """The serving engine's path: the model in append mode (cache read-only, new keys
    scattered into slots), two prompts prefilled in one call with a padding row, then greedy
    decode steps with each slot at its own length; logprobs against the full forward pass."""
    from llmos_jax.models import init_cache
    from llmos_jax.serve import steps

    c = tiny_config(family)
    model = build_model(c)
    params = jax.tree.map(lambda x: x * 8 if x.ndim > 1 else x, init_params(model, seed=5))
    engine_model = model.clone(append_kv=True)
    prompts = {2: [5, 6, 7, 8, 9, 10, 11], 0: [12, 13, 14]}  # slot -> prompt
    cache = init_cache(engine_model.cfg, 4, 32)
    tokens = np.zeros((4, 16), np.int32)
    slots = np.full(4, 4, np.int32)  # rows 2, 3: padding (slot 4 is out of range)
    for r, (slot, p) in enumerate(prompts.items()):
        tokens[r, : len(p) - 1], slots[r] = p[:-1], slot
    cache, _ = steps.prefill(
        engine_model, params, cache, tokens, tokens, slots, with_logprobs=False
    )
    seqs = {slot: list(p) for slot, p in prompts.items()}
    forward = _full_forward(model, params)
    for _ in range(5):
        last = np.zeros(4, np.int32)
        lengths = np.zeros(4, np.int32)
        for slot, seq in seqs.items():
            last[slot], lengths[slot] = seq[-1], len(seq) - 1
        zeros = np.zeros(4, np.int32)
        cache, nxt, (chosen, top_ids, top_lp) = steps.decode(
            engine_model,
            params,
            cache,
            last,
            lengths,
            zeros.astype(np.uint32),
            zeros,
            zeros,
            np.zeros(4, np.float32),  # greedy
            zeros,
            np.ones(4, np.float32),
            kv_len=16,
            filtering=False,
        )
        for slot, seq in seqs.items():
            ref = jax.nn.log_softmax(forward(jnp.asarray(seq)[None])[0, -1])
            assert int(nxt[slot]) == int(jnp.argmax(ref))
            np.testing.assert_allclose(float(chosen[slot]), float(ref.max()), atol=1e-4)
            np.testing.assert_allclose(
                np.asarray(top_lp[slot]), np.sort(np.asarray(ref))[::-1][:20], atol=1e-4
            )
            seq.append(int(nxt[slot]))
