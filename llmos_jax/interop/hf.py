"""Hugging Face GPT-2 / Llama directories <-> llmos_jax model configs and parameters.

A Hugging Face model directory is `config.json` plus `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Tensors are read and written with `safetensors.numpy` only (no
torch, no pickle, no remote code). Our parameter names follow the Hugging Face layout one module
to one tensor, so every conversion below is a transpose and a reshape:

  torch Linear weights are [out, in]  -> our kernels are [in, ...]   (Llama: transpose)
  GPT-2 Conv1D weights are [in, out]  -> already our order           (GPT-2: no transpose)
  GPT-2 fuses q, k, v into c_attn     -> split into query/key/value   (and fused back on export)

The config side (config.json <-> `config.model`) is in `hf_config`; its names are re-exported
here so that `hf` is the one namespace for both.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from llmos_jax.interop.hf_config import (
    CONFIG_FILE,
    INDEX_FILE,
    WEIGHTS_FILE,
    UnsupportedModelError,
    config_from_hf,
    hf_config_from,
    is_hf_model_dir,
    model_fields_from_hf,
    read_hf_config,
)
from llmos_jax.models import ModelConfig

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "WEIGHTS_FILE",
    "Params",
    "UnsupportedModelError",
    "config_from_hf",
    "hf_config_from",
    "is_hf_model_dir",
    "load_hf_params",
    "model_fields_from_hf",
    "params_to_hf",
    "read_hf_config",
    "save_hf_model",
]

# Buffers some checkpoints carry that are not parameters (GPT-2's causal masks, cached RoPE
# frequencies): recomputed by our model, so skipped.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

Params = dict[str, Any]
# One function per family and direction below, read top to bottom against the Hugging Face names.
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
