"""Config validation: `validate(config, num_devices)` raises ConfigError naming the first invalid
field. It runs once, before anything compiles, so a typo costs a second rather than a compile.
"""

from __future__ import annotations

import ml_collections

from llmos_jax.config import (
    ATTENTION_IMPLS,
    DECAYS,
    DTYPES,
    FAMILIES,
    POSITIONS,
    REMAT,
    SOURCES,
    TOKENIZER_TYPES,
    WANDB_MODES,
    ConfigError,
    mesh_shape,
    resolved_model,
)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError naming the first invalid field. Cheap: runs before any compilation."""
    from llmos_jax import objectives  # The registry is the source of truth for objective names.

    c = config
    _check(
        c.objective.name in objectives.names(),
        "objective.name",
        f"unknown objective {c.objective.name!r}; known: {', '.join(objectives.names())}",
    )
    _check(c.objective.z_loss >= 0, "objective.z_loss", "must be >= 0")
    m = c.model
    from llmos_jax.models import ARCHS

    _check(m.arch in ARCHS, "model.arch", f"unknown arch {m.arch!r}; known: {', '.join(ARCHS)}")
    _check(m.family in FAMILIES, "model.family", f"unknown family {m.family!r}; known: {FAMILIES}")
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_len"):
        _check(int(m[f]) > 0, f"model.{f}", f"must be positive, got {m[f]}")
    _check(
        m.d_model % m.n_heads == 0 or m.head_dim > 0,
        "model.n_heads",
        f"n_heads={m.n_heads} does not divide d_model={m.d_model} (or set model.head_dim)",
    )
    _check(
        m.n_heads % m.n_kv_heads == 0,
        "model.n_kv_heads",
        f"n_kv_heads={m.n_kv_heads} does not divide n_heads={m.n_heads}",
    )
    _check(
        m.position in ("",) + POSITIONS,
        "model.position",
        f"unknown position {m.position!r}; known: {POSITIONS}",
    )
    rm = resolved_model(m)
    _check(
        rm["position"] != "rope" or rm["head_dim"] % 2 == 0,
        "model.head_dim",
        f"RoPE needs an even head dimension, got {rm['head_dim']}",
    )
    for f in ("dtype", "param_dtype"):
        _check(m[f] in DTYPES, f"model.{f}", f"unknown dtype {m[f]!r}; known: {DTYPES}")
    _check(m.remat in REMAT, "model.remat", f"unknown remat policy {m.remat!r}; known: {REMAT}")
    _check(
        m.attention_impl in ATTENTION_IMPLS,
        "model.attention_impl",
        f"unknown {m.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}",
    )
    _check(
        m.attention_impl != "causal_blocks" or c.objective.name == "clm",
        "model.attention_impl",
        f"causal_blocks is exact for a causal mask only; objective {c.objective.name!r} masks "
        "otherwise (use auto)",
    )
    _check(
        m.matmul_impl in ("einsum", "dense2d"),
        "model.matmul_impl",
        f"unknown {m.matmul_impl!r}; known: einsum, dense2d",
    )
    _check(0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", "must be in [0, 1)")

    d = c.data
    _check(d.source in SOURCES, "data.source", f"unknown source {d.source!r}; known: {SOURCES}")
    _check(d.source != "files" or len(d.paths) > 0, "data.paths", "source=files needs paths")
    _check(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", "source=tfds needs a name")
    _check(d.seq_len > 1, "data.seq_len", "must be > 1")
    _check(
        d.seq_len <= m.max_len,
        "data.seq_len",
        f"seq_len={d.seq_len} exceeds model.max_len={m.max_len}",
    )
    _check(0.0 < d.eval_fraction < 1.0, "data.eval_fraction", "must be in (0, 1)")
    _check(
        d.tokenizer.type in TOKENIZER_TYPES,
        "data.tokenizer.type",
        f"unknown tokenizer type {d.tokenizer.type!r}; known: {TOKENIZER_TYPES}",
    )
    _check(
        m.vocab_size >= 16 + len(d.tokenizer.user_defined_symbols),
        "model.vocab_size",
        "too small for the special and user-defined tokens",
    )

    t = c.train
    _check(t.steps > 0, "train.steps", "must be positive")
    for f in (
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "max_consecutive_nonfinite",
        "grad_accum_steps",
        "global_batch_size",
    ):
        _check(int(t[f]) > 0, f"train.{f}", f"must be positive, got {t[f]}")
    _check(t.eval_batches >= 0, "train.eval_batches", "must be >= 0")
    _check(t.keep_every >= 0, "train.keep_every", "must be >= 0 (0 keeps only the newest)")
    _check(
        t.global_batch_size % t.grad_accum_steps == 0,
        "train.grad_accum_steps",
        f"grad_accum_steps={t.grad_accum_steps} does not divide "
        f"global_batch_size={t.global_batch_size}",
    )

    o = c.optim
    _check(o.lr > 0, "optim.lr", "must be positive")
    _check(o.decay in DECAYS, "optim.decay", f"unknown decay {o.decay!r}; known: {DECAYS}")
    _check(
        0 <= o.warmup_steps <= t.steps,
        "optim.warmup_steps",
        f"warmup_steps={o.warmup_steps} must be in [0, train.steps={t.steps}]",
    )
    _check(0.0 <= o.end_lr_ratio <= 1.0, "optim.end_lr_ratio", "must be in [0, 1]")
    _check(0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0, "optim.b1", "b1 and b2 must be in [0, 1)")
    _check(
        o.weight_decay >= 0 and o.clip_norm >= 0,
        "optim.weight_decay",
        "weight_decay and clip_norm must be >= 0",
    )

    sizes = mesh_shape(c, num_devices)
    dp = sizes["data"] * sizes["fsdp"]
    micro = t.global_batch_size // t.grad_accum_steps
    _check(
        micro % dp == 0,
        "train.global_batch_size",
        f"the micro-batch of {micro} sequences (global_batch_size={t.global_batch_size} / "
        f"grad_accum_steps={t.grad_accum_steps}) is not divisible by the data-parallel size "
        f"data*fsdp={dp}",
    )
    _check(
        t.global_batch_size % process_count == 0,
        "train.global_batch_size",
        f"not divisible by the {process_count} hosts",
    )
    tp = sizes["tensor"]
    for f in ("n_heads", "n_kv_heads", "d_ff", "vocab_size"):
        _check(
            int(m[f]) % tp == 0, f"model.{f}", f"{f}={m[f]} is not divisible by mesh.tensor={tp}"
        )
    _check(
        m.d_model % sizes["fsdp"] == 0,
        "model.d_model",
        f"d_model={m.d_model} is not divisible by mesh.fsdp={sizes['fsdp']}",
    )
    _check(
        c.wandb.mode in WANDB_MODES,
        "wandb.mode",
        f"unknown mode {c.wandb.mode!r}; known: {WANDB_MODES}",
    )
    s = c.sample
    _check(s.temperature >= 0, "sample.temperature", "must be >= 0")
    _check(0.0 < s.top_p <= 1.0, "sample.top_p", "must be in (0, 1]")
    _check(s.top_k >= 0, "sample.top_k", "must be >= 0")
