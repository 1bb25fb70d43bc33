"""Experiment configs: load `FILE[:ARG]`, apply `--config.a.b=value` overrides, resolve.

Every experiment is one Python file under `configs/` with `get_config(arg: str | None)` returning
a `ml_collections.ConfigDict` built on `base_config()`. `config_checks.validate` checks it once,
before anything compiles, and every error names the offending field.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import pathlib

import ml_collections

FAMILIES = ("gpt2", "llama")
POSITIONS = ("learned", "rope", "sinusoidal")
OBJECTIVES = ("clm",)
DTYPES = ("float32", "bfloat16", "float16")
DECAYS = ("cosine", "linear", "constant")
REMAT = ("none", "full", "dots")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "causal_blocks")
SOURCES = ("pydoc", "files", "tfds", "shapes")
TOKENIZER_TYPES = ("bpe", "unigram")
WANDB_MODES = ("offline", "online", "disabled")

# Logical axis -> mesh axes. Parameters and activations name logical axes; only this list (and the
# config override of it) decides how they map onto the device mesh.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("length", None),
)

# What each family fixes about the block; `model.position` and `model.tie_embeddings` may override.
FAMILY_DEFAULTS = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", use_bias=True, tie=True),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie=False),
}


class ConfigError(ValueError):
    """A config value is invalid; the message starts with the dotted field name."""


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment. Each field says what it controls."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds init, data order and dropout; the data order is a function of (seed, index).
    c.objective = ml_collections.ConfigDict()
    c.objective.name = "clm"  # Which loss: see llmos_jax/objectives.
    c.objective.z_loss = 0.0  # Weight of log(Z)^2, which keeps the softmax normaliser near 1.

    m = c.model = ml_collections.ConfigDict()
    m.arch = "decoder"  # Which network (llmos_jax.models.ARCHS): decoder, ...
    m.family = "llama"  # gpt2 | llama
    m.vocab_size = 1024  # Also the size the SentencePiece tokenizer is trained to.
    m.d_model = 256  # D
    m.n_layers = 4  # L
    m.n_heads = 8  # N
    m.n_kv_heads = 8  # K (grouped-query attention when K < N)
    m.head_dim = 0  # H; 0 means d_model // n_heads
    m.d_ff = 1024  # F
    m.max_len = 512  # Longest sequence (sizes learned position tables; caps generation)
    m.position = (
        ""  # "" = family default (gpt2: learned, llama: rope) | learned | rope | sinusoidal
    )
    m.tie_embeddings = ml_collections.FieldReference(None, field_type=bool)  # None = family default
    m.rope_theta = 10000.0
    m.norm_eps = 1e-5
    m.dropout_rate = 0.0
    m.dtype = (
        "float32"  # Compute dtype: bfloat16 on GPU/TPU, float32 on CPU (bf16 is slower there).
    )
    m.param_dtype = "float32"
    m.remat = "none"  # none | full | dots (save matmul outputs, recompute the rest)
    m.scan_layers = True  # nn.scan over layers: compile time independent of depth.
    m.attention_impl = "auto"  # auto | xla | cudnn (jax.nn.dot_product_attention implementation)
    # | causal_blocks (causal LM only). With matmul_impl = "dense2d": faster on CPU, same math
    # (llmos_jax/models/cpu_kernels.py); einsum | dense2d.
    m.matmul_impl = "einsum"

    d = c.data = ml_collections.ConfigDict()
    d.source = "pydoc"  # pydoc (Python's own docs, offline) | files | tfds
    d.paths = ()  # For source=files: .txt / .jsonl files or globs.
    d.text_key = "text"  # Field holding the text in .jsonl / tfds records.
    d.tfds_name = ""  # For source=tfds: a registered dataset name, e.g. "lm1b".
    d.tfds_split = "train"
    d.tfds_data_dir = ""  # Where the ArrayRecord files are (tfds' default when empty).
    d.max_documents = 0  # 0 = all; caps very large sources.
    d.seq_len = 256  # T: every packed row has exactly this many tokens.
    d.eval_fraction = 0.1  # Share of documents held out for evaluation (split by document).
    d.lowercase = False  # Cleaning keeps case and punctuation unless asked.
    d.strip_punctuation = False
    d.strip_html = True
    d.strip_urls = True
    t = d.tokenizer = ml_collections.ConfigDict()
    t.type = "bpe"  # bpe | unigram
    t.path = ""  # An existing SentencePiece .model to use instead of training one.
    t.user_defined_symbols = ()  # Extra pieces reserved in the vocabulary (e.g. "<mask>").

    tr = c.train = ml_collections.ConfigDict()
    tr.steps = 200  # Total optimizer steps.
    tr.global_batch_size = 8  # Sequences per step, across all hosts and devices.
    tr.grad_accum_steps = 1  # Micro-batches per step (global batch split this many ways).
    tr.log_every = 10
    tr.eval_every = 100  # Evaluate on the held-out split every this many steps (and at the end).
    tr.eval_batches = 0  # 0 = the whole held-out split.
    tr.checkpoint_every = 100
    tr.keep_checkpoints = 3  # The newest this many checkpoints are kept...
    tr.keep_every = 0  # ...plus, forever, every step divisible by this (0 = none).
    tr.max_consecutive_nonfinite = 5  # Stop after this many skipped (non-finite) updates in a row.

    o = c.optim = ml_collections.ConfigDict()
    o.lr = 3e-3  # Peak learning rate.
    o.warmup_steps = 20  # Linear warmup from 0 to lr.
    o.decay = "cosine"  # cosine | linear | constant, from the end of warmup to train.steps.
    o.end_lr_ratio = 0.1  # Final lr as a fraction of the peak.
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1  # Decoupled (AdamW); never applied to norms, biases or embeddings' scales.
    o.clip_norm = 1.0  # Global-norm clipping; 0 disables.

    mesh = c.mesh = ml_collections.ConfigDict()
    mesh.data = -1  # -1: whatever the other axes leave of the device count.
    mesh.fsdp = 1
    mesh.tensor = 1
    mesh.axis_rules = DEFAULT_AXIS_RULES

    w = c.wandb = ml_collections.ConfigDict()
    w.mode = "offline"  # offline needs no account; online | disabled.
    w.project = "llmos_jax"
    w.entity = ""
    w.name = ""

    s = c.sample = ml_collections.ConfigDict()
    s.max_new_tokens = 64
    s.temperature = 0.8  # 0 = greedy.
    s.top_k = 0  # 0 = off.
    s.top_p = 1.0  # 1 = off.
    return c


def load_config(spec: str, overrides: list[str] | None = None) -> ml_collections.ConfigDict:
    """Loads `FILE[:ARG]`, applies `a.b=value` overrides and resolves derived fields."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: no such file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"_llmos_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {path} defines no get_config(arg)")
    takes_arg = bool(inspect.signature(module.get_config).parameters)
    config = module.get_config(arg or None) if takes_arg else module.get_config()
    for item in overrides or []:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `a.b.c=value` override; a value that is a Python literal is parsed as one."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form field=value")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: no such config section")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"{key}: no such config field")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, str) and not isinstance(value, str):
        value = raw
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"{key}: {e}") from None


def resolved_model(m: ml_collections.ConfigDict) -> dict:
    """The model config with family defaults filled in, as a plain dict for the model code."""
    fam = FAMILY_DEFAULTS[m.family]
    out = m.to_dict()
    out["position"] = m.position or fam["position"]
    out["tie_embeddings"] = fam["tie"] if m.tie_embeddings is None else bool(m.tie_embeddings)
    out["norm"] = fam["norm"]
    out["mlp"] = fam["mlp"]
    out["use_bias"] = fam["use_bias"]
    out["head_dim"] = m.head_dim or m.d_model // m.n_heads
    return out


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """The (data, fsdp, tensor) sizes, with a -1 axis filled from the device count."""
    sizes = {k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh: only one axis may be -1, got {free}")
    for k, v in sizes.items():
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{k}={v}: must be a positive size or -1")
    fixed = 1
    for v in sizes.values():
        if v != -1:
            fixed *= v
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh: fixed axes multiply to {fixed}, which does not divide the {num_devices} "
                f"devices (mesh.{free[0]}=-1 cannot be filled)"
            )
        sizes[free[0]] = num_devices // fixed
    total = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if total != num_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} = {total} "
            f"!= {num_devices} devices"
        )
    return sizes


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON, written into every run directory."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a config written by to_json on top of the current defaults."""
    loaded = json.loads(text)
    config = base_config()

    def merge(node, values, prefix):
        for k, v in values.items():
            if isinstance(v, dict) and k in node and isinstance(node[k], ml_collections.ConfigDict):
                merge(node[k], v, prefix + k + ".")
            else:
                cur = node[k] if k in node else None
                if isinstance(cur, tuple) and isinstance(v, list):
                    v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
                with node.ignore_type():
                    node[k] = v

    merge(config, loaded, "")
    return config
