"""Hugging Face GPT-2 / Llama directories <-> llmos_jax model configs and parameters.

A Hugging Face model directory is `config.json` plus `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Tensors are read and written with `safetensors.numpy` only (no
torch, no pickle, no remote code). Our parameter names follow the Hugging Face layout one module
to one tensor, so every conversion below is a transpose and a reshape:

  torch Linear weights are [out, in]  -> our kernels are [in, ...]   (Llama: transpose)
  GPT-2 Conv1D weights are [in, out]  -> already our order           (GPT-2: no transpose)
  GPT-2 fuses q, k, v into c_attn     -> split into query/key/value   (and fused back on export)

Anything in a config that our model does not compute exactly (RoPE scaling, attention biases in
Llama, sliding windows, the erf GELU, ...) is rejected with an error naming the Hugging Face field,
rather than converted into a model that silently differs.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from llmos_jax.config import ConfigError, base_config
from llmos_jax.models import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# GPT-2 activations that are exactly the tanh-approximated GELU our Mlp computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# Buffers some checkpoints carry that are not parameters (GPT-2's causal masks, cached RoPE
# frequencies): recomputed by our model, so skipped.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

Params = dict[str, Any]


class UnsupportedModelError(ConfigError):
    """A Hugging Face config or checkpoint needs something llmos_jax does not model."""


def is_hf_model_dir(path: str | pathlib.Path) -> bool:
    """True for a directory holding config.json and safetensors weights (single or sharded)."""
    p = pathlib.Path(path)
    has_weights = (p / WEIGHTS_FILE).is_file() or (p / INDEX_FILE).is_file()
    return (p / CONFIG_FILE).is_file() and has_weights


def read_hf_config(model_dir: str | pathlib.Path) -> dict[str, Any]:
    return json.loads((pathlib.Path(model_dir) / CONFIG_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# Configs.


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


# ---------------------------------------------------------------------------------------------
# Parameters. One function per family and direction, read top to bottom against the HF names.

Get = Callable[[str, tuple[int, ...]], np.ndarray]


def _llama_layer(get: Get, p: str, c: ModelConfig) -> Params:
    d, n, k, h, f = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff
    a, m = p + "self_attn.", p + "mlp."
    return {
        "attn_norm": {"scale": get(p + "input_layernorm.weight", (d,))},
        "attn": {
            "query": {"kernel": get(a + "q_proj.weight", (n * h, d)).T.reshape(d, n, h)},
            "key": {"kernel": get(a + "k_proj.weight", (k * h, d)).T.reshape(d, k, h)},
            "value": {"kernel": get(a + "v_proj.weight", (k * h, d)).T.reshape(d, k, h)},
            "out": {"kernel": get(a + "o_proj.weight", (d, n * h)).T.reshape(n, h, d)},
        },
        "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight", (d,))},
        "mlp": {
            "gate": {"kernel": get(m + "gate_proj.weight", (f, d)).T},
            "up": {"kernel": get(m + "up_proj.weight", (f, d)).T},
            "down": {"kernel": get(m + "down_proj.weight", (d, f)).T},
        },
    }


def _llama_layer_hf(lp: Params, p: str, c: ModelConfig) -> dict[str, np.ndarray]:
    d, nh, kh = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    a, m = lp["attn"], lp["mlp"]
    return {
        p + "input_layernorm.weight": lp["attn_norm"]["scale"],
        p + "self_attn.q_proj.weight": a["query"]["kernel"].reshape(d, nh).T,
        p + "self_attn.k_proj.weight": a["key"]["kernel"].reshape(d, kh).T,
        p + "self_attn.v_proj.weight": a["value"]["kernel"].reshape(d, kh).T,
        p + "self_attn.o_proj.weight": a["out"]["kernel"].reshape(nh, d).T,
        p + "post_attention_layernorm.weight": lp["mlp_norm"]["scale"],
        p + "mlp.gate_proj.weight": m["gate"]["kernel"].T,
        p + "mlp.up_proj.weight": m["up"]["kernel"].T,
        p + "mlp.down_proj.weight": m["down"]["kernel"].T,
    }


def _gpt2_layer(get: Get, p: str, c: ModelConfig) -> Params:
    d, n, h, f = c.d_model, c.n_heads, c.head_dim, c.d_ff
    # c_attn is Conv1D [D, 3D] holding q | k | v side by side.
    qkv_w = np.split(get(p + "attn.c_attn.weight", (d, 3 * d)), 3, axis=1)
    qkv_b = np.split(get(p + "attn.c_attn.bias", (3 * d,)), 3)
    attn = {
        name: {"kernel": w.reshape(d, n, h), "bias": b.reshape(n, h)}
        for name, w, b in zip(("query", "key", "value"), qkv_w, qkv_b)
    }
    attn["out"] = {
        "kernel": get(p + "attn.c_proj.weight", (d, d)).reshape(n, h, d),
        "bias": get(p + "attn.c_proj.bias", (d,)),
    }
    return {
        "attn_norm": {"scale": get(p + "ln_1.weight", (d,)), "bias": get(p + "ln_1.bias", (d,))},
        "attn": attn,
        "mlp_norm": {"scale": get(p + "ln_2.weight", (d,)), "bias": get(p + "ln_2.bias", (d,))},
        "mlp": {
            "up": {
                "kernel": get(p + "mlp.c_fc.weight", (d, f)),
                "bias": get(p + "mlp.c_fc.bias", (f,)),
            },
            "down": {
                "kernel": get(p + "mlp.c_proj.weight", (f, d)),
                "bias": get(p + "mlp.c_proj.bias", (d,)),
            },
        },
    }


def _gpt2_layer_hf(lp: Params, p: str, c: ModelConfig) -> dict[str, np.ndarray]:
    d = c.d_model
    a, m = lp["attn"], lp["mlp"]
    qkv = ("query", "key", "value")
    return {
        p + "ln_1.weight": lp["attn_norm"]["scale"],
        p + "ln_1.bias": lp["attn_norm"]["bias"],
        p + "attn.c_attn.weight": np.concatenate([a[x]["kernel"].reshape(d, d) for x in qkv], 1),
        p + "attn.c_attn.bias": np.concatenate([a[x]["bias"].reshape(d) for x in qkv]),
        p + "attn.c_proj.weight": a["out"]["kernel"].reshape(d, d),
        p + "attn.c_proj.bias": a["out"]["bias"],
        p + "ln_2.weight": lp["mlp_norm"]["scale"],
        p + "ln_2.bias": lp["mlp_norm"]["bias"],
        p + "mlp.c_fc.weight": m["up"]["kernel"],
        p + "mlp.c_fc.bias": m["up"]["bias"],
        p + "mlp.c_proj.weight": m["down"]["kernel"],
        p + "mlp.c_proj.bias": m["down"]["bias"],
    }


def _names(c: ModelConfig, gpt2_prefix: str = "transformer.") -> dict[str, str]:
    """The HF names of the non-layer tensors and the per-layer prefix ("{i}" = layer index)."""
    if c.family == "gpt2":
        g = gpt2_prefix
        return dict(
            embed=g + "wte.weight",
            pos=g + "wpe.weight",
            norm=g + "ln_f.",
            layer=g + "h.{i}.",
        )
    return dict(embed="model.embed_tokens.weight", norm="model.norm.", layer="model.layers.{i}.")


class _Reader(contextlib.ExitStack):
    """Lazy reads from one safetensors file or an index of shards; remembers what was read."""

    def __init__(self, model_dir: str | pathlib.Path):
        super().__init__()
        from safetensors import safe_open

        root = pathlib.Path(model_dir)
        if (root / WEIGHTS_FILE).is_file():
            files = {WEIGHTS_FILE}
            self._where = None
        else:
            self._where = json.loads((root / INDEX_FILE).read_text())["weight_map"]
            files = set(self._where.values())
        self._files = {f: self.enter_context(safe_open(root / f, framework="np")) for f in files}
        self.names = {n for h in self._files.values() for n in h.keys()}
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.names:
            raise UnsupportedModelError(f"checkpoint has no tensor {name!r} (config.json needs it)")
        handle = self._files[WEIGHTS_FILE if self._where is None else self._where[name]]
        array = handle.get_tensor(name)
        if tuple(array.shape) != tuple(shape):
            raise UnsupportedModelError(
                f"tensor {name!r} has shape {tuple(array.shape)}; config.json implies {shape}"
            )
        self.used.add(name)
        return array


def load_hf_params(model_dir: str | pathlib.Path, cfg: ModelConfig) -> Params:
    """Numpy params for `cfg` (see `config_from_hf`) from a Hugging Face safetensors checkpoint.

    Arrays are cast to `cfg.param_dtype`; with `cfg.scan_layers` every `layers/*` leaf is stacked
    on a leading L axis, otherwise the layers are `layers_0 ... layers_{L-1}`.
    """
    dtype = cfg.weight_dtype
    with _Reader(model_dir) as r:
        # Checkpoints saved from a bare GPT2Model (the original "gpt2") have no "transformer.".
        prefix = "transformer." if "transformer.wte.weight" in r.names else ""
        names = _names(cfg, prefix)
        v, d = cfg.vocab_size, cfg.d_model
        params: Params = {"embed": {"embedding": r.get(names["embed"], (v, d))}}
        if cfg.family == "gpt2":
            params["pos_embed"] = {"embedding": r.get(names["pos"], (cfg.max_len, d))}
        layer_fn = _gpt2_layer if cfg.family == "gpt2" else _llama_layer
        layers = [layer_fn(r.get, names["layer"].format(i=i), cfg) for i in range(cfg.n_layers)]
        params["final_norm"] = {"scale": r.get(names["norm"] + "weight", (d,))}
        if cfg.norm == "layernorm":
            params["final_norm"]["bias"] = r.get(names["norm"] + "bias", (d,))
        if not cfg.tie_embeddings:
            params["lm_head"] = {"kernel": r.get("lm_head.weight", (v, d)).T}
        # A tied checkpoint may still store its (identical) lm_head; it is not a parameter here.
        left = {
            n
            for n in r.names - r.used
            if not n.endswith(_BUFFER_SUFFIXES) and n != "lm_head.weight"
        }
        if left:
            raise UnsupportedModelError(
                f"checkpoint has tensors llmos_jax has no parameter for (a feature it does not "
                f"model): {sorted(left)[:8]}"
            )
    if cfg.scan_layers:
        params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
    return jax.tree.map(lambda x: np.asarray(x, dtype=dtype), params)


def params_to_hf(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Hugging Face tensors (names as transformers saves them) from llmos params (any arrays)."""
    params = jax.tree.map(np.asarray, params)
    names = _names(cfg)
    out = {names["embed"]: params["embed"]["embedding"]}
    if cfg.family == "gpt2":
        out[names["pos"]] = params["pos_embed"]["embedding"]
    layer_fn = _gpt2_layer_hf if cfg.family == "gpt2" else _llama_layer_hf
    for i in range(cfg.n_layers):
        if cfg.scan_layers:
            layer = jax.tree.map(lambda x, i=i: x[i], params["layers"])
        else:
            layer = params[f"layers_{i}"]
        out.update(layer_fn(layer, names["layer"].format(i=i), cfg))
    out[names["norm"] + "weight"] = params["final_norm"]["scale"]
    if cfg.norm == "layernorm":
        out[names["norm"] + "bias"] = params["final_norm"]["bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_hf_model(
    model_dir: str | pathlib.Path,
    hf_config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    max_shard_bytes: int = 0,
) -> list[str]:
    """Writes config.json and the weights; shards (with an index) above `max_shard_bytes` > 0.

    Returns the weight files written. transformers refuses safetensors files without
    metadata {"format": "pt"}, so every file carries it.
    """
    from safetensors.numpy import save_file

    root = pathlib.Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if max_shard_bytes > 0 and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], root / WEIGHTS_FILE, metadata=metadata)
        return [WEIGHTS_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file, shard in zip(files, shards):
        save_file(shard, root / file, metadata=metadata)
    index = {
        "metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
        "weight_map": {name: file for file, shard in zip(files, shards) for name in shard},
    }
    (root / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files
