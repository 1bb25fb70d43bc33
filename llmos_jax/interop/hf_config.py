"""Hugging Face config.json (GPT-2, Llama) <-> llmos `config.model` fields.

Anything our model does not compute exactly (scaled RoPE, attention or MLP biases in Llama,
sliding windows, the erf GELU, ...) is rejected with an error naming the Hugging Face field,
rather than converted into a model that silently differs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from llmos_jax.config import ConfigError, base_config
from llmos_jax.models import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# GPT-2 activations that are exactly the tanh-approximated GELU our Mlp computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


class UnsupportedModelError(ConfigError):
    """A Hugging Face config or checkpoint needs something llmos_jax does not model."""


def is_hf_model_dir(path: str | pathlib.Path) -> bool:
    """True for a directory holding config.json and safetensors weights (single or sharded)."""
    p = pathlib.Path(path)
    has_weights = (p / WEIGHTS_FILE).is_file() or (p / INDEX_FILE).is_file()
    return (p / CONFIG_FILE).is_file() and has_weights


def read_hf_config(model_dir: str | pathlib.Path) -> dict[str, Any]:
    return json.loads((pathlib.Path(model_dir) / CONFIG_FILE).read_text())


def _reject(field: str, value: Any, why: str) -> None:
    raise UnsupportedModelError(f"Hugging Face config field {field}={value!r}: {why}")


def _rope_theta(hf: dict[str, Any]) -> float:
    """The RoPE base, accepting transformers 5 (`rope_parameters`) and 4 (`rope_theta`,
    `rope_scaling`) configs; any scaled RoPE variant is rejected."""
    for field in ("rope_scaling", "rope_parameters"):
        rope = hf.get(field) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            _reject(field, rope, "only unscaled RoPE (rope_type 'default') is implemented")
        extra = set(rope) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
        if extra:
            _reject(field, rope, f"unsupported RoPE settings {sorted(extra)}")
        factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if factor != 1.0:
            _reject("partial_rotary_factor", factor, "RoPE is applied to the whole head")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _gpt2_fields(hf: dict[str, Any]) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        _reject("activation_function", act, f"our GPT-2 MLP computes the tanh GELU {TANH_GELUS}")
    if not hf.get("scale_attn_weights", True):
        _reject("scale_attn_weights", False, "attention scores are always scaled by 1/sqrt(H)")
    for field in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(field, False):
            _reject(field, True, "not implemented")
    d = int(hf["n_embd"])
    return dict(
        family="gpt2",
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        n_layers=int(hf["n_layer"]),
        n_heads=int(hf["n_head"]),
        n_kv_heads=int(hf["n_head"]),
        head_dim=0,
        d_ff=int(hf.get("n_inner") or 4 * d),  # n_inner null means 4 * n_embd
        max_len=int(hf["n_positions"]),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _llama_fields(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("hidden_act", "silu") != "silu":
        _reject("hidden_act", hf["hidden_act"], "the Llama MLP is SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field, False):
            _reject(field, True, "Llama layers here have no biases")
    d, n = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d // n)
    return dict(
        family="llama",
        vocab_size=int(hf["vocab_size"]),
        d_model=d,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n,
        n_kv_heads=int(hf.get("num_key_value_heads") or n),
        head_dim=0 if head_dim * n == d else head_dim,  # 0 = d_model // n_heads
        d_ff=int(hf["intermediate_size"]),
        max_len=int(hf["max_position_embeddings"]),
        rope_theta=_rope_theta(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def model_fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """`config.model` fields equivalent to a Hugging Face config.json (a dict)."""
    kind = hf.get("model_type")
    if kind not in ("gpt2", "llama"):
        _reject("model_type", kind, "only gpt2 and llama are supported")
    if hf.get("sliding_window") is not None or hf.get("use_sliding_window"):
        _reject("sliding_window", hf.get("sliding_window"), "attention is global")
    if hf.get("quantization_config"):
        _reject("quantization_config", "...", "quantized checkpoints are not supported")
    return _gpt2_fields(hf) if kind == "gpt2" else _llama_fields(hf)


def config_from_hf(hf: dict[str, Any]) -> ml_collections.ConfigDict:
    """A full llmos experiment config (defaults elsewhere) for a Hugging Face model config.

    Dropout is set to 0: the original run's dropout is a training choice, not part of the
    function; set `model.dropout_rate` to fine-tune with it.
    """
    config = base_config()
    for key, value in model_fields_from_hf(hf).items():
        config.model[key] = value
    config.model.dropout_rate = 0.0
    config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    return config


def hf_config_from(
    cfg: ModelConfig, *, bos_id: int | None = None, eos_id: int | None = None
) -> dict[str, Any]:
    """The Hugging Face config.json (a dict) for a resolved llmos model config."""
    if not cfg.causal:
        _reject_export("causal", False, "GPT2LMHeadModel / LlamaForCausalLM are causal")
    common = dict(
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        dtype=cfg.param_dtype,
    )
    if cfg.family == "gpt2":
        if cfg.position != "learned":
            _reject_export("model.position", cfg.position, "GPT-2 has learned positions")
        if cfg.n_kv_heads != cfg.n_heads or cfg.head_dim * cfg.n_heads != cfg.d_model:
            _reject_export(
                "model.n_kv_heads", cfg.n_kv_heads, "GPT-2 needs K = N and H = D / N (no GQA)"
            )
        p = cfg.dropout_rate
        return dict(
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            n_positions=cfg.max_len,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new",
            resid_pdrop=p,
            embd_pdrop=p,
            attn_pdrop=0.0,  # our model has no dropout on attention probabilities
            **common,
        )
    if cfg.position != "rope":
        _reject_export("model.position", cfg.position, "Llama has rotary positions")
    return dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_len,
        rms_norm_eps=cfg.norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta. Both, so either loads it.
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rope_theta=cfg.rope_theta,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        **common,
    )


def _reject_export(field: str, value: Any, why: str) -> None:
    raise UnsupportedModelError(f"{field}={value!r} has no Hugging Face equivalent: {why}")
