"""What the benchmark measures: the named presets (config, batch, length, backends they run on
by default), the Hugging Face Llama that the PyTorch row builds to match cpu-ref, and the step that
pins a config to the measured batch and length. Kept apart from the timing code so a new preset or
model size is a change to this file alone; llmos_jax is imported inside the functions, after the
entry point has parsed its flags.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


CPU_REF_OVERRIDES = (
    "model.family=llama",
    "model.d_model=256",
    "model.n_layers=4",
    "model.n_heads=8",
    "model.n_kv_heads=8",
    "model.d_ff=1024",
    "model.vocab_size=1024",
    "model.max_len=256",
    "model.dtype=float32",
    "model.param_dtype=float32",
)


def _cpu_ref_config(arg=None):
    from llmos_jax.config import base_config

    del arg
    return base_config()


def _llama_125m_config(arg=None):
    """Used only when configs/clm/llama_125m.py is missing: GPT-3 Small shape, Llama block."""
    from llmos_jax.config import base_config

    del arg
    c = base_config()
    m = c.model
    m.family, m.vocab_size, m.d_model, m.n_layers = "llama", 32000, 768, 12
    m.n_heads, m.n_kv_heads, m.d_ff, m.max_len, m.dtype = 12, 12, 2048, 1024, "bfloat16"
    c.data.seq_len = 1024
    return c


def _llama_1b_config(arg=None):
    """Used only when configs/clm/llama_1b.py is missing: d=2048, 16 layers, 32/8 heads."""
    from llmos_jax.config import base_config

    del arg
    c = base_config()
    m = c.model
    m.family, m.vocab_size, m.d_model, m.n_layers = "llama", 32000, 2048, 16
    m.n_heads, m.n_kv_heads, m.d_ff, m.max_len, m.dtype = 32, 8, 8192, 2048, "bfloat16"
    m.remat = "full"
    c.data.seq_len = 2048
    return c


# name: (config file, fallback builder, overrides, batch per device, seq_len, backends)
PRESETS = {
    "cpu-ref": (None, _cpu_ref_config, CPU_REF_OVERRIDES, 8, 256, ("cpu",)),
    "llama-125m": (
        "configs/clm/llama_125m.py",
        _llama_125m_config,
        ("model.dtype=bfloat16",),
        16,
        1024,
        ("gpu", "tpu"),
    ),
    # The config file's own advice for one accelerator: remat=dots and a small batch.
    "llama-1b": (
        "configs/clm/llama_1b.py",
        _llama_1b_config,
        ("model.dtype=bfloat16", "model.remat=dots"),
        4,
        2048,
        ("gpu", "tpu"),
    ),
}

# The PyTorch reference: the same Llama as cpu-ref (untied, RoPE, RMSNorm, SwiGLU, no biases).
TORCH_REF = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=1024,
    tie_word_embeddings=False,
)


def load_preset(name: str, overrides):
    """(config, batch per device, seq_len) of a preset; the config file wins when it exists."""
    from llmos_jax.config import apply_override, load_config

    file, fallback, pre_overrides, batch, seq_len, _ = PRESETS[name]
    if file and (REPO / file).is_file():
        config = load_config(str(REPO / file))
    else:
        config = fallback(None)
    for item in (*pre_overrides, *overrides):
        apply_override(config, item)
    return config, batch, seq_len


def finish_config(config, batch: int, seq_len: int, n_devices: int):
    """Puts the measured batch and length into the config and sizes the mesh."""
    config.train.global_batch_size = batch
    config.train.grad_accum_steps = 1
    config.data.seq_len = seq_len
    config.model.max_len = max(int(config.model.max_len), seq_len)
    config.optim.warmup_steps = 0  # a constant learning rate: no step is special
    config.optim.decay = "constant"
    if n_devices == 1:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    # More devices: the config's own mesh (validate() names the field if it does not fit).
    return config
