"""Training throughput of llmos_jax's train step, next to a Hugging Face PyTorch loop on CPU.

Question: how many tokens/s (and what MFU) does one optimizer step of llmos_jax reach per preset,
and on CPU, how does that compare with a Hugging Face transformers + PyTorch training loop of the
same Llama architecture and size, measured in the same process on the same cores?

    .venv/bin/python experiments/benchmark/train_throughput.py                 # CPU: cpu-ref
    .venv/bin/python experiments/benchmark/train_throughput.py --out bench.md  # also write it
    .venv/bin/python experiments/benchmark/train_throughput.py --knobs all     # config knobs
    .venv/bin/python experiments/benchmark/train_throughput.py --breakdown --profile
    .venv/bin/python experiments/benchmark/train_throughput.py --sweep         # XLA flags
    # GPU/TPU: llama-125m and llama-1b in bf16 (configs/clm/llama_{125m,1b}.py when present)
    .venv/bin/python experiments/benchmark/train_throughput.py --config configs/clm/tiny.py

Each of our rows builds the real training pieces (build_model, make_optimizer, init_train_state,
make_train_step, jit_train_step, the objective's loss) on a mesh and times steps on random tokens:
compile time is the first step (trace + compile + run), step time the mean over --steps timed
steps after --warmup, each step blocked on (block_until_ready). The timed steps are split into
--rounds chunks that alternate between rows (ours, its knob variants, PyTorch), so background
load on a shared machine hits every row alike; each row reports the share of the cores that
other processes used during its timed steps.

--knobs adds rows of the same preset with config knobs (scan_layers, remat, attention_impl) or
in-script variants of library functions (monkeypatched while that row is built and traced; no
file under llmos_jax/ is edited). --sweep runs XLA flags and virtual device counts, each in a
fresh process (XLA reads its flags once, before the backend starts), with PyTorch interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------
# Presets.

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

# In-process knob rows (--knobs): label -> (config overrides, in-script variants).
KNOBS = {
    "scan_layers=False": (("model.scan_layers=False",), ()),
    "remat=dots": (("model.remat=dots",), ()),
    "remat=full": (("model.remat=full",), ()),
    "attention_impl=xla": (("model.attention_impl=xla",), ()),
    "variant dense2d": ((), ("dense2d",)),
    "variant attn-einsum": ((), ("attn-einsum",)),
    "dense2d + scan_layers=False": (("model.scan_layers=False",), ("dense2d",)),
    "dense2d + attn-einsum + scan_layers=False": (
        ("model.scan_layers=False",),
        ("dense2d", "attn-einsum"),
    ),
}

# Fresh-process rows (--sweep): label -> (XLA flags, virtual CPU devices, devices in the mesh).
# Flags checked against jax 0.10.2's `XLA_FLAGS=--help` (an unknown flag aborts the process).
SWEEP = {
    "no XLA flags": ("", 1, 1),
    "--xla_cpu_use_xnnpack=false": ("--xla_cpu_use_xnnpack=false", 1, 1),
    "--xla_cpu_multi_thread_eigen=false": ("--xla_cpu_multi_thread_eigen=false", 1, 1),
    "--xla_cpu_use_onednn=true": ("--xla_cpu_use_onednn=true", 1, 1),
    "--xla_cpu_enable_fast_math=true": ("--xla_cpu_enable_fast_math=true", 1, 1),
    "8 virtual CPU devices, mesh of 1": ("", 8, 1),
    "8 virtual CPU devices, data-parallel mesh of 8": ("", 8, 8),
}

# --------------------------------------------------------------------------------------------
# Variants: in-script copies of library code with one change each. They measure proposed
# library changes; they are applied only while the row that asks for them is built and traced.


def _dense2d_class():
    """layers.Einsum computed as ONE 2-D matmul: [prod(batch), prod(contracted)] @
    [prod(contracted), prod(out)], reshaped back. Same parameters (names, shapes, init) and the
    same math as the einsum; XLA's CPU backend gets 2-D dots whose gradients need no transposes
    of 3-D/4-D activations (the einsum's separate batch dims B, T force such copies)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from llmos_jax.models import layers

    class Einsum2D(layers.Einsum):
        @nn.compact
        def __call__(self, x):
            kernel = self.param(
                "kernel",
                nn.with_logical_partitioning(layers._init(self.std), self.axes),
                self.shape,
                self.param_dtype,
            )
            lhs, rest = self.equation.replace(" ", "").split(",")
            rhs, out = rest.split("->")
            contracted = [a for a in lhs if a in rhs and a not in out]
            batch = [a for a in lhs if a not in contracted]
            kept = [a for a in rhs if a not in contracted]
            plain = (
                lhs == "".join(batch + contracted)
                and rhs == "".join(contracted + kept)
                and out == "".join(batch + kept)
            )
            xd, kd = x.astype(self.dtype), kernel.astype(self.dtype)
            if plain:
                lead, kshape = x.shape[: len(batch)], kernel.shape[len(contracted) :]
                y = xd.reshape(math.prod(lead), -1) @ kd.reshape(-1, math.prod(kshape))
                y = y.reshape(*lead, *kshape)
            else:
                y = jnp.einsum(self.equation, xd, kd)
            if self.bias_shape is not None:
                bias = self.param(
                    "bias",
                    nn.with_logical_partitioning(nn.initializers.zeros, self.bias_axes),
                    self.bias_shape,
                    self.param_dtype,
                )
                y = y + bias.astype(self.dtype)
            return y

    return Einsum2D


def _einsum_attention(original):
    """jax.nn.dot_product_attention for the call layers.Attention makes (q [B,T,N,H], k/v
    [B,S,K,H], bool mask [B,1|N,T,S]) as two einsums and a softmax, with the mask added as a
    [B,1,T,S] bias: jax's 'xla' path selects against a scalar, which XLA:CPU materialises as a
    [B,N,T,S] buffer per layer. Anything else goes to `original`."""
    import jax
    import jax.numpy as jnp

    def attention(
        query,
        key,
        value,
        bias=None,
        mask=None,
        *,
        scale=None,
        is_causal=False,
        implementation=None,
        **kwargs,
    ):
        if bias is not None or is_causal or kwargs or implementation not in (None, "xla"):
            return original(
                query,
                key,
                value,
                bias=bias,
                mask=mask,
                scale=scale,
                is_causal=is_causal,
                implementation=implementation,
                **kwargs,
            )
        b, t, n, h = query.shape
        s, k = key.shape[1], key.shape[2]
        g = n // k
        scale = h**-0.5 if scale is None else scale
        q = (query * jnp.asarray(scale, query.dtype)).reshape(b, t, k, g, h)  # [B,T,N,H]: small
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, key, preferred_element_type=jnp.float32)
        if mask is not None:
            # An additive bias the size of the mask, broadcast over heads inside the add's fusion
            # (a select against a scalar materialises that scalar as a [B,N,T,S] buffer).
            m = mask.reshape(b, 1, 1, t, s) if mask.shape[1] == 1 else mask.reshape(b, k, g, t, s)
            logits = logits + jnp.where(m, 0.0, -1e30).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
        out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, value)
        return out.reshape(b, t, n, h)

    return attention


VARIANTS = {
    "dense2d": "layers.Einsum as one 2-D matmul (batch and contracted dims flattened)",
    "attn-einsum": "attention as einsum + additive [B,1,T,S] mask bias + softmax + einsum",
}


@contextlib.contextmanager
def variants_applied(names):
    """Monkeypatches the named variants in, and restores the library afterwards."""
    import jax

    from llmos_jax.models import layers, transformer

    saved = (layers.Einsum, transformer.Einsum, jax.nn.dot_product_attention)
    try:
        for name in names:
            if name == "dense2d":
                cls = _dense2d_class()
                layers.Einsum = transformer.Einsum = cls  # looked up by name at trace time
            elif name == "attn-einsum":
                jax.nn.dot_product_attention = _einsum_attention(saved[2])
            else:
                raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        yield
    finally:
        layers.Einsum, transformer.Einsum, jax.nn.dot_product_attention = saved


# --------------------------------------------------------------------------------------------
# Hardware and load.


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy (user+nice+system+irq+softirq) since boot."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _self_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadMeter:
    """CPU this process used, and the share of all cores OTHER processes used, while running."""

    def __init__(self):
        self.other, self.wall, self.self_cpu = 0.0, 0.0, 0.0

    def start(self):
        self._b0, self._s0, self._w0 = _busy_seconds(), _self_seconds(), time.perf_counter()

    def stop(self):
        b1, s1, w1 = _busy_seconds(), _self_seconds(), time.perf_counter()
        self.wall += w1 - self._w0
        self.self_cpu += s1 - self._s0
        if b1 is not None and self._b0 is not None:
            self.other += max((b1 - self._b0) - (s1 - self._s0), 0.0)

    @property
    def other_share(self) -> float:
        return self.other / ((os.cpu_count() or 1) * self.wall) if self.wall else math.nan


def wait_for_quiet(threshold: float, timeout: float) -> float:
    """Waits (up to timeout s) until other processes use < threshold of the cores over 1 s."""
    share, deadline = math.nan, time.time() + timeout
    while True:
        b0, s0, w0 = _busy_seconds(), _self_seconds(), time.perf_counter()
        time.sleep(1.0)
        b1, s1, w1 = _busy_seconds(), _self_seconds(), time.perf_counter()
        if b0 is None or b1 is None:
            return math.nan
        share = max((b1 - b0) - (s1 - s0), 0.0) / ((os.cpu_count() or 1) * (w1 - w0))
        if share < threshold or time.time() > deadline:
            return share


# --------------------------------------------------------------------------------------------
# Rows.


class Row:
    """One timed training loop; subclasses provide setup() and step()."""

    impl = ""

    def __init__(self, preset: str, batch: int, seq_len: int, label: str = ""):
        self.preset, self.batch, self.seq_len, self.label = preset, batch, seq_len, label
        self.times: list[float] = []
        self.compile_s = math.nan
        self.params = 0
        self.flops_per_token = math.nan
        self.peak = math.nan  # FLOP/s of the devices this row runs on, in total
        self.load = LoadMeter()
        self.note = ""

    @property
    def name(self) -> str:
        return f"{self.impl} ({self.label})" if self.label else self.impl

    def run_steps(self, n: int):
        self.load.start()
        for _ in range(n):
            t0 = time.perf_counter()
            self.step()
            self.times.append(time.perf_counter() - t0)
        self.load.stop()

    def summary(self) -> dict:
        import numpy as np

        t = np.asarray(self.times)
        mean = float(t.mean())
        tps = self.batch * self.seq_len / mean
        return dict(
            impl=self.name,
            preset=self.preset,
            params=self.params,
            batch=self.batch,
            seq_len=self.seq_len,
            compile_s=self.compile_s,
            step_ms=1e3 * mean,
            median_ms=1e3 * float(np.median(t)),
            min_ms=1e3 * float(t.min()),
            std_ms=1e3 * float(t.std()),
            steps=len(t),
            tokens_per_s=tps,
            tokens_per_s_median=self.batch * self.seq_len / float(np.median(t)),
            mfu=tps * self.flops_per_token / self.peak,
            cpu_s_per_step=self.load.self_cpu / max(len(t), 1),
            other_load=self.load.other_share,
            loss=self.loss(),
        )


class OursRow(Row):
    impl = "llmos_jax"

    def __init__(self, preset, config, batch, seq_len, devices, variants=(), label=""):
        super().__init__(preset, batch, seq_len, label)
        self.config, self.devices, self.variants = config, devices, tuple(variants)

    def patched(self):
        return variants_applied(self.variants)

    def setup(self):
        with self.patched():
            self._setup()

    def _setup(self):
        import jax
        import numpy as np

        from llmos_jax import objectives, perf
        from llmos_jax.config import resolved_model, validate
        from llmos_jax.mesh import axis_rules, host_to_global, make_mesh
        from llmos_jax.models import build_model
        from llmos_jax.train.init import init_train_state
        from llmos_jax.train.optim import make_optimizer
        from llmos_jax.train.step import jit_train_step, make_train_step

        c = self.config
        validate(c, len(self.devices), 1)
        self.mesh = make_mesh(c, self.devices)
        self.rules = axis_rules(c)
        self.model = build_model(c, deterministic=False)  # as the train loop does
        self.tx, self.schedule = make_optimizer(c)
        self.state, self.shardings = init_train_state(
            build_model(c), self.tx, self.mesh, self.rules, self.seq_len, c.seed
        )
        self.loss_fn = objectives.get(c.objective.name)(c, self.model)
        step = make_train_step(self.loss_fn, self.tx, self.schedule, int(c.train.grad_accum_steps))
        self.step_fn = jit_train_step(step, self.shardings, self.mesh, self.rules)
        rng = np.random.default_rng(c.seed)
        b, t = self.batch, self.seq_len
        host = dict(
            tokens=rng.integers(0, c.model.vocab_size, (b, t), dtype=np.int32),
            segment_ids=np.ones((b, t), np.int32),
            positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
            loss_mask=np.ones((b, t), np.int32),
        )
        self.batch_arrays = host_to_global(host, self.mesh)
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        model = resolved_model(c.model)
        self.expected_params = perf.total_params(model)
        self.flops_per_token = perf.train_flops_per_token(model, t)
        dev = self.devices[0]
        per_device, self.peak_source = perf.peak_flops(dev)
        if dev.platform == "cpu":
            # Virtual CPU devices share the same cores: the mesh has the whole machine's peak.
            self.peak = per_device * len(jax.local_devices(backend="cpu"))
        else:
            self.peak = per_device * len(self.devices)
        t0 = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - t0

    def step(self):
        import jax

        self.state, self.metrics = self.step_fn(self.state, self.batch_arrays)
        jax.block_until_ready((self.state, self.metrics))

    def loss(self) -> float:
        return float(self.metrics["train/loss"])


class TorchRow(Row):
    impl = "PyTorch + HF transformers"

    def __init__(self, preset, batch, seq_len, optim_cfg, threads: int, seed: int = 0):
        super().__init__(preset, batch, seq_len)
        self.optim_cfg, self.threads, self.seed = optim_cfg, threads, seed

    def setup(self):
        import numpy as np
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        cfg = LlamaConfig(**TORCH_REF, max_position_embeddings=max(self.seq_len, 256))
        self.model = LlamaForCausalLM(cfg).float().train()
        o = self.optim_cfg
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=float(o.lr),
            betas=(float(o.b1), float(o.b2)),
            eps=float(o.eps),
            weight_decay=float(o.weight_decay),
        )
        self.clip = float(o.clip_norm)
        rng = np.random.default_rng(self.seed)
        tokens = rng.integers(0, cfg.vocab_size, (self.batch, self.seq_len), dtype=np.int64)
        self.tokens = torch.from_numpy(tokens)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.note = (
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"attention {self.model.config._attn_implementation}"
        )
        t0 = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - t0  # eager: the first step, nothing to compile

    def step(self):
        import torch

        out = self.model(input_ids=self.tokens, labels=self.tokens)
        out.loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._loss = out.loss.detach()

    def loss(self) -> float:
        return float(self._loss)


# --------------------------------------------------------------------------------------------
# Building rows.


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


def hardware_lines(backend: str, devices) -> list[str]:
    import jax
    import jaxlib

    lines = [
        f"- CPU: {cpu_model()}, {cpu_cores()} cores available to this process "
        f"({os.cpu_count()} online), {platform.machine()}; Python {platform.python_version()}",
        f"- jax {jax.__version__} (jaxlib {jaxlib.__version__}), backend {backend}, "
        f"{len(devices)} device(s) in the mesh of {len(jax.devices())}: {devices[0].device_kind}",
    ]
    flags = os.environ.get("XLA_FLAGS", "")
    lines.append(f"- XLA_FLAGS: `{flags}`" if flags else "- XLA_FLAGS: (none)")
    if "torch" in sys.modules:
        import torch
        import transformers

        lines.append(
            f"- torch {torch.__version__}, transformers {transformers.__version__}, "
            f"torch threads {torch.get_num_threads()}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Output.


def _fmt_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "n/a"


def markdown(summaries, hw_lines, conv, peak_line, notes) -> str:
    torch_tps = {s["preset"]: s["tokens_per_s"] for s in summaries if "PyTorch" in s["impl"]}
    out = [
        "| implementation | preset | params | batch×seq | compile s | step ms | tokens/s | MFU "
        "| ratio vs PyTorch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        ref = torch_tps.get(s["preset"])
        ratio = f"{s['tokens_per_s'] / ref:.2f}×" if ref else "n/a"
        out.append(
            f"| {s['impl']} | {s['preset']} | {_fmt_params(s['params'])} | "
            f"{s['batch']}×{s['seq_len']} | {s['compile_s']:.1f} | {s['step_ms']:.0f} | "
            f"{s['tokens_per_s']:,.0f} | {_pct(s['mfu'])} | {ratio} |"
        )
    out += [
        "",
        "compile s: the first step (trace + compile + run; PyTorch: its first eager step). "
        "step ms: mean of the timed steps, each blocked on; tokens/s = batch×seq / step; "
        "ratio: tokens/s over the PyTorch row of the same preset.",
        "",
        "| implementation | steps | median ms | min ms | std ms | tokens/s at median "
        "| own CPU s/step | other processes' share of the cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        out.append(
            f"| {s['impl']} | {s['steps']} | {s['median_ms']:.0f} | {s['min_ms']:.0f} | "
            f"{s['std_ms']:.0f} | {s['tokens_per_s_median']:,.0f} | {s['cpu_s_per_step']:.2f} | "
            f"{_pct(s['other_load'])} |"
        )
    out += ["", "Hardware:", *hw_lines, "", f"MFU convention: {conv}", f"Peak: {peak_line}"]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Breakdown and profile of our step.


def breakdown(row: OursRow, n: int) -> list[str]:
    """Mean ms of jitted sub-parts: forward+loss, forward+backward, optimizer update."""
    import jax
    import optax

    from llmos_jax.mesh import sharding_context

    params, opt_state, batch = row.state.params, row.state.opt_state, row.batch_arrays
    key = jax.random.PRNGKey(0)
    fwd = jax.jit(lambda p, b: row.loss_fn(p, b, key, {})[0])
    grad = jax.jit(lambda p, b: jax.grad(lambda q: row.loss_fn(q, b, key, {})[0])(p))

    def update(g, o, p):
        u, o = row.tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    upd = jax.jit(update)
    with row.patched(), sharding_context(row.mesh, row.rules):
        grads = grad(params, batch)
    parts = [
        ("forward + loss", fwd, (params, batch)),
        ("forward + backward (grads)", grad, (params, batch)),
        ("optimizer update (clip + AdamW + apply)", upd, (grads, opt_state, params)),
    ]
    lines = ["| part | mean ms | min ms |", "|---|---:|---:|"]
    for name, f, args in parts:
        with row.patched(), sharding_context(row.mesh, row.rules):
            jax.block_until_ready(f(*args))
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                jax.block_until_ready(f(*args))
                ts.append(time.perf_counter() - t0)
        lines.append(f"| {name} | {1e3 * sum(ts) / len(ts):.0f} | {1e3 * min(ts):.0f} |")
    mean, best = 1e3 * sum(row.times) / len(row.times), 1e3 * min(row.times)
    lines.append(f"| whole train step (timed above) | {mean:.0f} | {best:.0f} |")
    return lines


def _op_category(op_name: str, kernel: str) -> str:
    """'bwd layers/mlp/gate [ynn_fusion]' from an HLO op_name and the kernel's name."""
    direction = "bwd" if "transpose(jvp" in op_name else "fwd"
    op = re.sub(r"^jit\([^)]*\)/", "", op_name)
    op = re.sub(r"transpose\(jvp\(\w+\)\)/|jvp\(\w+\)/|while/body/|closed_call/", "", op)
    op = re.sub(r"checkpoint/|rematted_computation/|remat\w*/", "", op)
    op = re.sub(r"layers_\d+", "layers_*", op)  # unrolled layers: one line for all of them
    kind = re.sub(r"(\.\d+)+$", "", kernel)
    where = "/".join(op.split("/")[:3]) or "(no op_name: XLA-made buffer or copy)"
    return f"{direction} {where} [{kind}]"


def _kernel_group(kind: str) -> str:
    if re.search(r"ynn|xnn|onednn|dot|gemm|matmul", kind):
        return "matmuls (XNNPACK/YNNPACK/Eigen dot kernels, with fused elementwise)"
    if re.search(r"copy|transpose", kind):
        return "copies / transposes (layout changes, often fused with elementwise)"
    if "dynamic" in kind:
        return "dynamic-slice / dynamic-update-slice (the layer scan's stacked buffers)"
    if "broadcast" in kind:
        return "materialised broadcasts (zero-filled buffers, constants)"
    return "other elementwise / reductions"


MODULE_GROUPS = (  # (regex on the category, group): approximate, from HLO op_name metadata
    (r"attn/(vmap|dot_product|BKGTS|BTKGH)", "attention core (QK^T, mask, softmax, AV)"),
    (r"attn/(query|key|value|out)", "attention projections (q, k, v, out)"),
    (r"attn/|concatenate|neg|cos|sin", "other attention elementwise (RoPE, gradient adds)"),
    (r"mlp/", "MLP (gate, up, down, SwiGLU)"),
    (r"norm", "RMSNorm"),
    (r"lm_head|logsumexp|take_along|argmax|log_softmax|reduce_max", "lm head + loss"),
    (r"embed", "embedding"),
    (r"cond/|apply_if_finite|adam|clip|global_norm|sqrt|is-finite|is_finite", "optimizer"),
)


def _module_group(cat: str) -> str:
    for pattern, name in MODULE_GROUPS:
        if re.search(pattern, cat):
            return name
    return "other (XLA-made buffers, copies, scan bookkeeping, metrics)"


def profile(row: OursRow, n: int, top: int, trace_dir: str) -> list[str]:
    """Traces n steps with jax.profiler; kernels' thread time grouped by source op."""
    import collections
    import glob
    import shutil

    import jax

    from llmos_jax.mesh import sharding_context

    with row.patched(), sharding_context(row.mesh, row.rules):
        hlo = row.step_fn.jitted.lower(row.state, row.batch_arrays).compile().as_text()
    op_of = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line)
        if m and m.group(1) not in op_of:
            op_of[m.group(1)] = m.group(2)
    shutil.rmtree(trace_dir, ignore_errors=True)
    jax.profiler.start_trace(trace_dir)
    t0 = time.perf_counter()
    for _ in range(n):
        row.step()
    wall = (time.perf_counter() - t0) / n
    jax.profiler.stop_trace()
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        return ["(no trace written)"]
    data = jax.profiler.ProfileData.from_file(files[0])
    per_cat: collections.Counter = collections.Counter()
    per_group: collections.Counter = collections.Counter()
    per_module: collections.Counter = collections.Counter()
    skip = ("ThunkExecutor", "SlinkyThreadPool", "$", "while", "conditional", "call")
    for plane in data.planes:
        for line in plane.lines:
            if "XLA" not in line.name and "PjRt" not in line.name:
                continue
            for ev in line.events:
                if ev.name.startswith(skip):
                    continue
                cat = _op_category(op_of.get(ev.name, ""), ev.name)
                per_cat[cat] += ev.duration_ns
                per_group[_kernel_group(cat.rsplit("[", 1)[-1])] += ev.duration_ns
                per_module[_module_group(cat)] += ev.duration_ns
    total = sum(per_cat.values()) or 1
    out = [
        f"Traced {n} steps: {1e3 * wall:.0f} ms/step wall, kernels' thread time "
        f"{total / 1e6 / n:.0f} ms/step summed over threads.",
        "",
        "| kernel group | thread ms/step | share |",
        "|---|---:|---:|",
    ]
    for g, ns in per_group.most_common():
        out.append(f"| {g} | {ns / 1e6 / n:.0f} | {100 * ns / total:.0f}% |")
    out += ["", "| source (fwd + bwd) | thread ms/step | share |", "|---|---:|---:|"]
    for g, ns in per_module.most_common():
        out.append(f"| {g} | {ns / 1e6 / n:.0f} | {100 * ns / total:.0f}% |")
    out += ["", "| thread ms/step | share | fwd/bwd, source op [XLA kernel] |", "|---:|---:|---|"]
    for cat, ns in per_cat.most_common(top):
        out.append(f"| {ns / 1e6 / n:.1f} | {100 * ns / total:.1f}% | `{cat}` |")
    return out


# --------------------------------------------------------------------------------------------
# Sweep: XLA flags and device counts, one fresh process each.


def sweep(args) -> str:
    wanted = [w.strip() for w in args.sweep_only.split(",") if w.strip()]
    entries = [(k, v) for k, v in SWEEP.items() if not wanted or any(w in k for w in wanted)]
    env0 = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env0.setdefault("JAX_PLATFORMS", "cpu")
    lines = [
        "| XLA flags / devices | our row | compile s | step ms | tokens/s | own CPU s/step "
        "| PyTorch tokens/s (same process) | ratio | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (flags, host_devices, mesh_devices) in entries:
        env = dict(env0)
        xla = " ".join(
            f
            for f in (
                flags,
                f"--xla_force_host_platform_device_count={host_devices}"
                if host_devices > 1
                else "",
            )
            if f
        )
        if xla:
            env["XLA_FLAGS"] = xla
        cmd = [sys.executable, __file__, "--json", "--presets", "cpu-ref"]
        cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--devices", str(mesh_devices), "--rounds", str(args.rounds or 0)]
        if args.sweep_knobs:
            cmd += ["--knobs", args.sweep_knobs]
        if args.no_torch:
            cmd += ["--no-torch"]
        for o in args.set:
            cmd += ["--set", o]
        print(f"[sweep] {label}", file=sys.stderr, flush=True)
        res = _run_json(cmd, env)
        rows = res.get("rows", [])
        torch_rows = [r for r in rows if "PyTorch" in r["impl"]]
        ref = torch_rows[0]["tokens_per_s"] if torch_rows else None
        if not rows:
            lines.append(f"| {label} | failed: {res.get('error', '?')} ||||||||")
        for r in rows:
            if "PyTorch" in r["impl"]:
                continue
            ref_s = f"{ref:,.0f}" if ref else "n/a"
            ratio = f"{r['tokens_per_s'] / ref:.2f}×" if ref else "n/a"
            lines.append(
                f"| {label} | {r['impl']} | {r['compile_s']:.1f} | {r['step_ms']:.0f} | "
                f"{r['tokens_per_s']:,.0f} | {r['cpu_s_per_step']:.2f} | {ref_s} | {ratio} | "
                f"{_pct(r['other_load'])} |"
            )
    return "\n".join(
        [
            f"XLA flag / device sweep on cpu-ref: one fresh process per line, {args.steps} timed "
            f"steps after {args.warmup} warm-up, PyTorch interleaved in the same process.",
            "",
            *lines,
            "",
        ]
    )


def _run_json(cmd, env) -> dict:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    print("  failed:", shlex.join(cmd), *tail, sep="\n  ", file=sys.stderr)
    return {"error": tail[-1] if tail else f"exit {proc.returncode}"}


# --------------------------------------------------------------------------------------------
# Main.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--presets",
        default="auto",
        help=f"comma-separated from {', '.join(PRESETS)}; auto: those for the backend (cpu: "
        "cpu-ref; gpu/tpu: llama-125m,llama-1b); none: only --config rows",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE[:ARG]",
        help="an extra row from an experiment config file (its own seq_len and global batch)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="a.b=v",
        help="config override for every one of our rows, e.g. model.scan_layers=False",
    )
    p.add_argument("--batch", type=int, default=0, help="global batch (default: per preset)")
    p.add_argument("--seq-len", type=int, default=0, help="sequence length (default: per preset)")
    p.add_argument("--steps", type=int, default=15, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="chunks the timed steps are split into, alternating between rows (default: "
        "min(steps, 5) on CPU, 1 on accelerators)",
    )
    p.add_argument(
        "--devices", type=int, default=0, help="devices in our mesh (default: CPU 1, else all)"
    )
    p.add_argument(
        "--knobs",
        default="",
        help=f"extra rows of cpu-ref (or the first preset): 'all' or comma-separated from: "
        f"{'; '.join(KNOBS)}",
    )
    p.add_argument("--no-baseline", action="store_true", help="with --knobs: only knob rows")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help=f"in-script library change for every one of our rows: {', '.join(VARIANTS)}",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference row")
    p.add_argument("--torch-threads", type=int, default=0, help="default: the cores available")
    p.add_argument(
        "--quiet-below",
        type=float,
        default=0.0,
        help="before each chunk of steps wait until other processes use less than this share "
        "of the cores (0 = do not wait)",
    )
    p.add_argument("--quiet-timeout", type=float, default=120.0, help="seconds per wait")
    p.add_argument("--breakdown", action="store_true", help="time forward, backward, update")
    p.add_argument("--profile", action="store_true", help="per-op profile of our rows")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-top", type=int, default=20)
    p.add_argument("--trace-dir", default="/tmp/llmos_bench_trace")
    p.add_argument("--sweep", action="store_true", help="XLA flag / device sweep (subprocesses)")
    p.add_argument("--sweep-only", default="", help="comma-separated substrings of sweep labels")
    p.add_argument("--sweep-knobs", default="", help="--knobs for each sweep process")
    p.add_argument("--out", default="", help="also write the Markdown to this file")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sweep:
        text = sweep(args)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return 0

    import jax

    from llmos_jax import perf

    backend = jax.default_backend()
    on_cpu = backend == "cpu"
    n_dev = args.devices or (1 if on_cpu else len(jax.devices()))
    devices = jax.devices()[:n_dev]

    specs = []  # (preset label, config, batch, seq_len)
    if args.presets == "auto":
        names = [n for n, p in PRESETS.items() if backend in p[5]]
    elif args.presets == "none":
        names = []
    else:
        names = [n.strip() for n in args.presets.split(",") if n.strip()]
    for name in names:
        if name not in PRESETS:
            raise SystemExit(f"--presets: unknown {name!r}; known: {', '.join(PRESETS)}")
        config, per_device_batch, seq = load_preset(name, args.set)
        batch = args.batch or per_device_batch * (1 if on_cpu else n_dev)
        specs.append((name, config, batch, args.seq_len or seq))
    for spec in args.config:
        from llmos_jax.config import load_config

        config = load_config(spec, args.set)
        label = Path(spec.partition(":")[0]).stem + (f":{spec.partition(':')[2]}" * (":" in spec))
        batch = args.batch or int(config.train.global_batch_size)
        specs.append((label, config, batch, args.seq_len or int(config.data.seq_len)))

    rows: list[Row] = []
    for name, config, batch, seq in specs:
        config = finish_config(config, batch, seq, n_dev)
        if not (args.knobs and args.no_baseline and name == specs[0][0]):
            rows.append(OursRow(name, config, batch, seq, devices, args.variant))
    if args.knobs and specs:
        from llmos_jax.config import apply_override

        labels = list(KNOBS) if args.knobs == "all" else [k.strip() for k in args.knobs.split(";")]
        name, config, batch, seq = specs[0]
        for label in labels:
            if label not in KNOBS:
                raise SystemExit(f"--knobs: unknown {label!r}; known: {'; '.join(KNOBS)}")
            overrides, variants = KNOBS[label]
            c = finish_config(config.copy_and_resolve_references(), batch, seq, n_dev)
            for item in overrides:
                apply_override(c, item)
            rows.append(
                OursRow(name, c, batch, seq, devices, (*args.variant, *variants), label=label)
            )

    ref = [r for r in rows if isinstance(r, OursRow) and r.preset == "cpu-ref"]
    if on_cpu and ref and not args.no_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("torch / transformers not installed: no PyTorch row", file=sys.stderr)
        else:
            threads = args.torch_threads or cpu_cores()
            rows.append(
                TorchRow(
                    "cpu-ref",
                    ref[0].batch,
                    ref[0].seq_len,
                    ref[0].config.optim,
                    threads,
                    ref[0].config.seed,
                )
            )

    for row in rows:
        print(f"setting up {row.name} {row.preset} ...", file=sys.stderr, flush=True)
        row.setup()
        for _ in range(args.warmup):
            row.step()
        print(f"  first step {row.compile_s:.1f} s, params {row.params:,}", file=sys.stderr)

    notes = []
    ours = [r for r in rows if isinstance(r, OursRow)]
    for r in ours:
        if not r.label:
            ok = "" if r.params == r.expected_params else " (MISMATCH)"
            notes.append(
                f"- params {r.preset}, llmos_jax: {r.params:,} in the initialised state, "
                f"{r.expected_params:,} by perf.total_params{ok}"
            )
    for r in rows:
        if isinstance(r, TorchRow):
            same = [o for o in ours if o.preset == r.preset]
            verdict = ""
            if same:
                verdict = (
                    " (equal to llmos_jax)"
                    if same[0].params == r.params
                    else f" (MISMATCH: llmos_jax has {same[0].params:,})"
                )
                # The same model: the same model-FLOPs definition and the same peak.
                r.flops_per_token, r.peak = same[0].flops_per_token, same[0].peak
            notes.append(f"- params {r.preset}, PyTorch: {r.params:,}{verdict}; {r.note}")
    for line in notes:
        print(line, file=sys.stderr)

    rounds = args.rounds or (min(args.steps, 5) if on_cpu else 1)
    chunks = [args.steps // rounds + (i < args.steps % rounds) for i in range(rounds)]
    waited = []
    for i, n in enumerate(chunks):
        for row in rows:
            if args.quiet_below > 0:
                waited.append(wait_for_quiet(args.quiet_below, args.quiet_timeout))
            row.run_steps(n)
        print(f"  round {i + 1}/{rounds} done", file=sys.stderr, flush=True)

    summaries = [r.summary() for r in rows]
    peak_line = "n/a"
    if ours:
        peak_line = (
            f"{ours[0].peak / 1e9:,.1f} GFLOP/s for the mesh; {ours[0].peak_source}. "
            f"${perf.CPU_PEAK_ENV} overrides the CPU number."
        )
    for v in sorted({v for r in ours for v in r.variants}):
        notes.append(f"- variant {v}: {VARIANTS[v]} (in-script; the library is unchanged)")
    if args.set:
        notes.append("- overrides for every llmos_jax row: " + " ".join(args.set))
    notes.append(
        f"- timed steps: {args.steps} per row after {args.warmup} warm-up, in {rounds} "
        "alternating chunk(s)"
        + (f"; waited for other load < {args.quiet_below:.0%} before each" if waited else "")
    )
    notes.append(
        "- final train loss: " + ", ".join(f"{s['impl']} {s['loss']:.3f}" for s in summaries)
    )
    text = markdown(
        summaries, hardware_lines(backend, devices), perf.MFU_CONVENTION, peak_line, notes
    )
    if args.breakdown:
        for r in ours:
            text += f"\nBreakdown of {r.name}, {r.preset} (each part jitted on its own):\n\n"
            text += "\n".join(breakdown(r, max(args.steps // 2, 3))) + "\n"
    if args.profile:
        for r in ours:
            text += f"\nProfile of {r.name}, {r.preset}:\n\n"
            text += "\n".join(profile(r, args.profile_steps, args.profile_top, args.trace_dir))
            text += "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        print(json.dumps(dict(rows=summaries, peak=peak_line), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
