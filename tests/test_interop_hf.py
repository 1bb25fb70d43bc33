"""Hugging Face GPT-2 / Llama import and export against transformers itself (f32, CPU).

Every reference number here comes from a transformers model (random weights, saved with
save_pretrained): logits, greedy generations, and transformers loading what we export.
"""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmos_jax.interop import hf
from llmos_jax.models import attention_mask, build_model
from llmos_jax.sampling import SampleOptions, generate
from tests import hf_reference as ref
from tests.helpers import tiny_config

TOL = 1e-4
VARIANTS = {
    # name: (builder, save_pretrained kwargs)
    "gpt2-tied": (lambda: ref.tiny_gpt2(tie=True), {}),
    "gpt2-untied": (lambda: ref.tiny_gpt2(tie=False, seed=1), {}),
    # GQA (K=2 < N=4), untied, sharded into an index of several files, non-default rope_theta.
    "llama-gqa-sharded": (lambda: ref.tiny_llama(n_kv_heads=2), {"max_shard_size": "50KB"}),
    # MHA, tied embeddings, head_dim (32) != hidden / heads (16).
    "llama-tied-headdim": (lambda: ref.tiny_llama(n_kv_heads=4, tie=True, head_dim=32, seed=2), {}),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{variant: (transformers model, its save_pretrained directory)}, built once."""
    out = {}
    for name, (build, kwargs) in VARIANTS.items():
        model = build()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path, **kwargs)
        out[name] = (model, path)
    return out


def _import(path, **model_overrides):
    config = hf.config_from_hf(hf.read_hf_config(path))
    for k, v in model_overrides.items():
        config.model[k] = v
    model = build_model(config)
    return model, hf.load_hf_params(path, model.cfg)


def _our_logits(model, params, tokens: np.ndarray) -> np.ndarray:
    b, t = tokens.shape
    positions = np.broadcast_to(np.arange(t), (b, t))

    # One jitted forward (inputs built inside it): on CPU every eager jax op is its own compile.
    @jax.jit
    def forward(params, tokens):
        mask = attention_mask(jnp.ones((b, t), jnp.int32))
        return model.apply({"params": params}, tokens, positions, mask)[0]

    return np.asarray(forward(params, tokens))


def _tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (2, 24))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_imported_logits_match_transformers(saved, name):
    hf_model, path = saved[name]
    model, params = _import(path)
    tokens = _tokens(model.cfg.vocab_size)
    want = ref.logits(hf_model, tokens)
    assert np.abs(_our_logits(model, params, tokens) - want).max() <= TOL
    if "sharded" in name:  # really the index format, not a single file
        assert (path / hf.INDEX_FILE).is_file() and not (path / hf.WEIGHTS_FILE).exists()


def test_imported_unscanned_layers_match_transformers(saved):
    hf_model, path = saved["gpt2-untied"]
    model, params = _import(path, scan_layers=False)
    assert "layers_1" in params
    tokens = _tokens(model.cfg.vocab_size, seed=1)
    np.testing.assert_allclose(
        _our_logits(model, params, tokens), ref.logits(hf_model, tokens), atol=TOL, rtol=0
    )


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-gqa-sharded"])
def test_greedy_generation_matches_transformers(saved, name):
    hf_model, path = saved[name]
    model, params = _import(path)
    # Different lengths: ours left-pads them into one batch; transformers runs each unpadded.
    prompts = [[5, 9, 17], [3, 8, 1, 22, 40, 7, 11]]
    n = 16
    greedy = SampleOptions(max_new_tokens=n, temperature=0.0)
    rng = jax.random.PRNGKey(0)
    # eos_id -1 is never produced: every row runs the full n steps on both sides.
    ours = generate(model, params, prompts, eos_id=-1, rng=rng, options=greedy)
    want = [ref.greedy(hf_model, p, n, eos_id=None) for p in prompts]
    assert ours == want and all(len(w) == n for w in want)

    # With an eos that transformers does emit, both must stop there (ours drops the eos). Same
    # batch shape as above, so the compiled sampler is reused.
    eos = next(t for i, t in enumerate(want[0]) if i >= 1 and t not in want[0][:i])
    stopped = [ref.greedy(hf_model, p, n, eos_id=eos) for p in prompts]
    assert stopped[0][-1] == eos and len(stopped[0]) < n
    ours = generate(model, params, prompts, eos_id=eos, rng=rng, options=greedy)
    assert ours == [s[:-1] if s[-1] == eos else s for s in stopped]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_round_trip_loads_in_transformers(saved, tmp_path, name):
    hf_model, path = saved[name]
    model, params = _import(path)
    tensors = hf.params_to_hf(params, model.cfg)
    # Lossless: the exported tensors are transformers' own, bit for bit (tied heads not stored).
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    for key, value in tensors.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    hf.save_hf_model(tmp_path, hf.hf_config_from(model.cfg, bos_id=1, eos_id=2), tensors)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings == model.cfg.tie_embeddings
    tokens = _tokens(model.cfg.vocab_size, seed=2)
    np.testing.assert_allclose(
        ref.logits(reloaded, tokens), ref.logits(hf_model, tokens), atol=TOL, rtol=0
    )


def _randomized_llmos_params(model, seed: int):
    """llmos' own init, with every leaf (norm scales, zero biases too) perturbed."""

    @jax.jit
    def init():
        tokens = jnp.zeros((1, 8), jnp.int32)
        mask = attention_mask(jnp.ones((1, 8), jnp.int32))
        return model.init(jax.random.PRNGKey(seed), tokens, jnp.arange(8)[None], mask)

    rng = np.random.default_rng(seed)
    noise = lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    return jax.tree.map(noise, nn.meta.unbox(init()["params"]))


@pytest.mark.parametrize(
    "family,model_overrides",
    [("llama", dict(n_kv_heads=2, rope_theta=300.0)), ("gpt2", dict(tie_embeddings=True))],
)
def test_export_of_llmos_model_matches_transformers(tmp_path, family, model_overrides):
    """The exporter alone: a model initialised by llmos, sharded on export, run by transformers."""
    model = build_model(tiny_config(family, **model_overrides))
    params = _randomized_llmos_params(model, seed=3)
    tensors = hf.params_to_hf(params, model.cfg)
    files = hf.save_hf_model(
        tmp_path, hf.hf_config_from(model.cfg, bos_id=2, eos_id=3), tensors, 40_000
    )
    assert len(files) > 1 and json.loads((tmp_path / hf.INDEX_FILE).read_text())["weight_map"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = _tokens(model.cfg.vocab_size, seed=4)
    np.testing.assert_allclose(
        ref.logits(reloaded, tokens), _our_logits(model, params, tokens), atol=TOL, rtol=0
    )


LLAMA = dict(
    model_type="llama",
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)
GPT2 = dict(model_type="gpt2", vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64)


def test_config_fields_map_onto_model_fields():
    llama = hf.config_from_hf(
        {**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    )
    m = llama.model
    assert (m.family, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff) == (
        "llama",
        64,
        2,
        4,
        2,
        128,
    )
    assert (m.max_len, m.norm_eps, m.rope_theta, m.tie_embeddings) == (64, 1e-6, 5e5, False)
    assert hf.config_from_hf({**LLAMA, "rope_theta": 1e4}).model.rope_theta == 1e4  # 4.x style
    gpt2 = hf.config_from_hf({**GPT2, "layer_norm_epsilon": 1e-3, "n_inner": 96}).model
    assert (gpt2.max_len, gpt2.norm_eps, gpt2.d_ff, gpt2.tie_embeddings) == (64, 1e-3, 96, True)
    assert hf.config_from_hf(GPT2).model.d_ff == 256  # n_inner null = 4 * n_embd


@pytest.mark.parametrize(
    "base,change,field",
    [
        (LLAMA, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        (LLAMA, {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "rope_parameters"),
        (LLAMA, {"attention_bias": True}, "attention_bias"),
        (LLAMA, {"mlp_bias": True}, "mlp_bias"),
        (LLAMA, {"hidden_act": "gelu"}, "hidden_act"),
        (LLAMA, {"sliding_window": 4096}, "sliding_window"),
        (LLAMA, {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (LLAMA, {"model_type": "mistral"}, "model_type"),
        (GPT2, {"activation_function": "gelu"}, "activation_function"),
        (GPT2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        (GPT2, {"scale_attn_weights": False}, "scale_attn_weights"),
    ],
)
def test_unsupported_configs_name_the_field(base, change, field):
    with pytest.raises(hf.UnsupportedModelError, match=f"field {field}="):
        hf.config_from_hf({**base, **change})


@pytest.mark.parametrize(
    "family,overrides,field",
    [("gpt2", dict(position="rope"), "model.position"), ("gpt2", {}, "model.n_kv_heads")],
)
def test_export_rejects_models_transformers_cannot_express(family, overrides, field):
    config = tiny_config(family, **overrides)
    if family == "gpt2" and not overrides:
        config.model.n_kv_heads = 2  # GQA: GPT-2 has no such thing
    with pytest.raises(hf.UnsupportedModelError, match=field):
        hf.hf_config_from(build_model(config).cfg)


def test_unknown_tensors_are_rejected(saved, tmp_path):
    """A checkpoint with a tensor we have no parameter for (here a Llama attention bias that
    config.json does not announce) must fail, not load into a model that silently differs."""
    from safetensors.numpy import load_file, save_file

    _, path = saved["llama-tied-headdim"]
    shutil.copytree(path, tmp_path, dirs_exist_ok=True)
    tensors = load_file(tmp_path / hf.WEIGHTS_FILE)
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(128, np.float32)
    save_file(tensors, tmp_path / hf.WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(hf.UnsupportedModelError, match="q_proj.bias"):
        _import(tmp_path)


def test_bfloat16_checkpoint_imports_exactly_as_float32(tmp_path):
    # Released Llama weights are usually bf16; params here are f32 (model.param_dtype).
    hf_model = ref.tiny_llama(seed=4).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path)
    model, params = _import(tmp_path)
    want = hf_model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()  # [K*H, D]
    got = params["layers"]["attn"]["key"]["kernel"][1]  # [D, K, H]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.reshape(model.cfg.d_model, -1).T, want)
