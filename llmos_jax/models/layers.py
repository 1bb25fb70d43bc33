"""Transformer building blocks with logical axis names on every parameter.

Dimension letters: B batch, T query length, S key length, D model dim, N heads, K kv heads,
H head dim, F mlp dim, V vocab. Parameter names follow Hugging Face's GPT-2 / Llama layout, one
module to one tensor (q/k/v/o, gate/up/down), so checkpoint conversion is a reshape, never a
re-derivation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models import cpu_kernels

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The resolved model hyper-parameters (see `llmos_jax.config.resolved_model`)."""

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_len: int
    position: str  # learned | rope | sinusoidal
    norm: str  # layernorm | rmsnorm
    mlp: str  # gelu | swiglu
    use_bias: bool
    tie_embeddings: bool
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    attention_impl: str = "auto"  # auto | xla | cudnn | causal_blocks (see cpu_kernels)
    matmul_impl: str = "einsum"  # einsum | dense2d (see cpu_kernels)
    causal: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]


def _init(std: float):
    return nn.initializers.normal(stddev=std)


class Einsum(nn.Module):
    """A kernel of `shape` contracted with the input by `equation`; optional `bias_shape` bias."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    equation: str
    std: float = 0.02
    bias_shape: tuple[int, ...] | None = None
    bias_axes: tuple[str, ...] | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: str = "einsum"  # or "dense2d": one 2-D matmul (cpu_kernels.einsum_2d)

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_init(self.std), self.axes),
            self.shape,
            self.param_dtype,
        )
        einsum = cpu_kernels.einsum_2d if self.impl == "dense2d" else jnp.einsum
        y = einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias_shape is not None:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.bias_axes),
                self.bias_shape,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class Norm(nn.Module):
    """RMSNorm (llama) or LayerNorm (gpt2), computed in float32 for stability under bf16."""

    kind: str
    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        xf = x.astype(jnp.float32)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (d,),
            self.param_dtype,
        )
        if self.kind == "rmsnorm":
            y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
            return (y * scale.astype(jnp.float32)).astype(self.dtype)
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (d,),
            self.param_dtype,
        )
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half convention (Hugging Face Llama), so q/k weights map 1:1.

    x: [B, T, N, H]; positions: [B, T].
    """
    h = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))  # [H/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def sinusoidal(positions: jax.Array, d: int) -> jax.Array:
    """The fixed sin/cos table of Vaswani et al.: [B, T] -> [B, T, D]."""
    half = d // 2
    inv = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = positions.astype(jnp.float32)[..., None] * inv
    out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(out, [(0, 0), (0, 0), (0, d - 2 * half)])


def _write_cache(cache: jax.Array, new: jax.Array, cache_index) -> jax.Array:
    """Writes new [B, T, K, H] into cache [B, S, K, H] at slot cache_index: a scalar (every row
    at the same slot, as batched sampling does) or a vector [B] (each row at its own slot, as the
    serving engine's independent sequences do)."""
    if jnp.ndim(cache_index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, cache_index, 1)
    row = lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, 0)
    return jax.vmap(row)(cache, new, cache_index)


def _attend_appended(q, k_new, v_new, cache, mask) -> jax.Array:
    """Queries q [B, T, N, H] over a read-only cache and the T new keys / values [B, T, K, H].

    The cache (k, v: [B', S', K, H]) may hold more rows and positions than are live: only its
    first B rows and its first S = mask.shape[-1] positions are read, `mask` [B, 1, T, S] saying
    which of them each query sees; the new keys are causal among themselves. Nothing the size of
    the cache is written, so a serving step over many slots moves no more memory than it reads
    (writing the cache back, as the plain path does, copied it several times per step).
    """
    b, t, n, h = q.shape
    kv_heads, s = k_new.shape[2], mask.shape[-1]
    ck, cv = (c[:b, :s].astype(q.dtype) for c in cache)
    qg = q.reshape(b, t, kv_heads, n // kv_heads, h) * jnp.asarray(h**-0.5, q.dtype)
    old = jnp.einsum("BTKGH,BSKH->BKGTS", qg, ck, preferred_element_type=jnp.float32)
    new = jnp.einsum("BTKGH,BUKH->BKGTU", qg, k_new, preferred_element_type=jnp.float32)
    lowest = jnp.finfo(jnp.float32).min
    old = jnp.where(mask[:, :, None], old, lowest)  # [B, 1, 1, T, S] over the K, G axes
    new = jnp.where(jnp.tril(jnp.ones((t, t), bool)), new, lowest)
    probs = jax.nn.softmax(jnp.concatenate([old, new], axis=-1), axis=-1).astype(q.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs[..., :s], cv) + jnp.einsum(
        "BKGTU,BUKH->BTKGH", probs[..., s:], v_new
    )
    return out.reshape(b, t, n, h)


def _dot_product_attention(c: ModelConfig, q, k, v, mask) -> jax.Array:
    """jax.nn.dot_product_attention with the configured implementation. It broadcasts K kv heads
    over N query heads (GQA) and picks the cuDNN flash kernel on GPU when the shapes allow it."""
    impl = None if c.attention_impl in ("auto", "causal_blocks") else c.attention_impl
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


class Attention(nn.Module):
    """Multi-head / grouped-query attention, optionally reading and writing a KV cache.

    With a cache (k, v: [B, S, K, H]) the new keys and values are written at `cache_index` (a
    scalar, or [B] for a slot per row) and the queries attend over the whole cache; `mask`
    [B, 1, T, S] says which slots each query may see.

    `append_kv`: the cache is read-only (see `_attend_appended`; cache_index is unused) and the
    layer returns the new (k, v) [B, T, K, H] in its place, for the caller to write where it wants
    (the serving engine scatters one token per slot into its slot cache).
    """

    cfg: ModelConfig
    append_kv: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, cache_index=None, deterministic=True):
        c = self.cfg
        d, n, k, h = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype, impl=c.matmul_impl)
        bias = c.use_bias
        q = Einsum(
            (d, n, h),
            ("embed", "heads", "head_dim"),
            "BTD,DNH->BTNH",
            name="query",
            bias_shape=(n, h) if bias else None,
            bias_axes=("heads", "head_dim"),
            **kw,
        )(x)
        key = Einsum(
            (d, k, h),
            ("embed", "kv_heads", "head_dim"),
            "BTD,DKH->BTKH",
            name="key",
            bias_shape=(k, h) if bias else None,
            bias_axes=("kv_heads", "head_dim"),
            **kw,
        )(x)
        v = Einsum(
            (d, k, h),
            ("embed", "kv_heads", "head_dim"),
            "BTD,DKH->BTKH",
            name="value",
            bias_shape=(k, h) if bias else None,
            bias_axes=("kv_heads", "head_dim"),
            **kw,
        )(x)
        if c.position == "rope":
            q = rope(q, positions, c.rope_theta)
            key = rope(key, positions, c.rope_theta)
        new_cache = None
        if cache is not None and self.append_kv:
            out = _attend_appended(q, key, v, cache, mask)
            new_cache = (key.astype(cache[0].dtype), v.astype(cache[1].dtype))
        elif cache is not None:
            ck = _write_cache(cache[0], key.astype(cache[0].dtype), cache_index)
            cv = _write_cache(cache[1], v.astype(cache[1].dtype), cache_index)
            new_cache = (ck, cv)
            out = _dot_product_attention(c, q, ck.astype(q.dtype), cv.astype(q.dtype), mask)
        elif c.attention_impl == "causal_blocks" and c.causal:
            out = cpu_kernels.causal_block_attention(q, key, v, mask)
        else:
            out = _dot_product_attention(c, q, key, v, mask)
        out = Einsum(
            (n, h, d),
            ("heads", "head_dim", "embed"),
            "BTNH,NHD->BTD",
            name="out",
            std=0.02 / (2 * c.n_layers) ** 0.5,
            bias_shape=(d,) if bias else None,
            bias_axes=("embed",),
            **kw,
        )(out)
        out = nn.Dropout(c.dropout_rate)(out, deterministic=deterministic)
        return out, new_cache


class Mlp(nn.Module):
    """SwiGLU (llama: gate, up, down) or GELU (gpt2: up, down with biases)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.cfg
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype, impl=c.matmul_impl)
        d, f = c.d_model, c.d_ff
        bias = dict(bias_shape=(f,), bias_axes=("mlp",)) if c.use_bias else {}
        out_bias = dict(bias_shape=(d,), bias_axes=("embed",)) if c.use_bias else {}
        up = Einsum((d, f), ("embed", "mlp"), "BTD,DF->BTF", name="up", **bias, **kw)(x)
        if c.mlp == "swiglu":
            gate = Einsum((d, f), ("embed", "mlp"), "BTD,DF->BTF", name="gate", **bias, **kw)(x)
            hidden = nn.silu(gate) * up
        else:
            hidden = nn.gelu(up, approximate=True)  # GPT-2 uses the tanh approximation.
        out = Einsum(
            (f, d),
            ("mlp", "embed"),
            "BTF,FD->BTD",
            name="down",
            std=0.02 / (2 * c.n_layers) ** 0.5,
            **out_bias,
            **kw,
        )(hidden)
        return nn.Dropout(c.dropout_rate)(out, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: ModelConfig
    deterministic: bool = True
    append_kv: bool = False  # see Attention

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, cache_index=None):
        c = self.cfg
        deterministic = self.deterministic
        norm = dict(kind=c.norm, eps=c.norm_eps, dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        h, new_cache = Attention(c, self.append_kv, name="attn")(
            Norm(**norm, name="attn_norm")(x), positions, mask, cache, cache_index, deterministic
        )
        x = x + h
        x = x + Mlp(c, name="mlp")(Norm(**norm, name="mlp_norm")(x), deterministic)
        return x, new_cache
