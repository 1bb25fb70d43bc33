"""FLOP accounting and model FLOPs utilisation (MFU), in MaxText's convention.

MFU = achieved model FLOP/s / peak FLOP/s, where "model FLOPs" are the FLOPs the model needs by
definition (not what the hardware ran): rematerialisation recompute, the optimizer, norms,
softmax and other elementwise work are not counted, so MFU is comparable across remat policies and
implementations. The peak is the dense bf16 matmul peak of the chip (sparsity excluded), even when
the run computes in float32; on CPU, where no datasheet number applies, it is a measured f32 matmul.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MFU_CONVENTION = (
    "MaxText MFU: FLOPs/token = 6*matmul_params (incl. D*V logits) + 6*L*T*N*H causal attention, "
    "no remat/elementwise; peak = dense bf16 per chip (CPU: measured f32 matmul)"
)

# Dense (non-sparse) bf16 peak FLOP/s per chip, from the vendors' datasheets.
PEAK_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100 PCIe": 756e12,
    "H100 SXM": 989e12,
    "H200": 989e12,
}

# jax `device.device_kind` -> PEAK_FLOPS key; first match wins, so specific patterns come first
# ("TPU v5 lite" before "TPU v5", which is how v5p reports itself; "H100 PCIe" before "H100").
_KIND_RULES: tuple[tuple[str, str], ...] = (
    (r"tpu v4(?! ?lite| ?i\b)", "TPU v4"),
    (r"tpu v5 ?(lite|e\b)", "TPU v5e"),
    (r"tpu v5(p\b|$)", "TPU v5p"),
    (r"tpu v6 ?(lite|e\b)", "TPU v6e"),
    (r"\ba100\b", "A100"),
    (r"\bh100\b.*pcie", "H100 PCIe"),
    (r"\bh100\b", "H100 SXM"),
    (r"\bg?h200\b", "H200"),  # GH200 carries the same Hopper GPU.
)

CPU_PEAK_ENV = "LLMOS_CPU_PEAK_FLOPS"
_CPU_MATMUL_N = 1024
_cpu_memo: dict[str, float] = {}  # Measure at most once per process (per cache key).


def _dims(model: Mapping[str, Any]) -> tuple[int, int, int, int, int, int, int, int]:
    """(V, D, L, N, K, H, F, mlp matrix count) of a resolved model dict."""
    d, n = int(model["d_model"]), int(model["n_heads"])
    h = int(model.get("head_dim") or d // n)  # Tolerate an unresolved head_dim of 0.
    mats = 3 if model.get("mlp", "swiglu") == "swiglu" else 2
    return (
        int(model["vocab_size"]),
        d,
        int(model["n_layers"]),
        n,
        int(model["n_kv_heads"]),
        h,
        int(model["d_ff"]),
        mats,
    )


def matmul_params(model: Mapping[str, Any]) -> int:
    """Weights that multiply every token: L*(D*N*H + 2*D*K*H + N*H*D + mats*D*F) + D*V.

    The D*V output projection counts even when tied, because the logits are a real matmul; the
    embedding lookup (a gather), position tables, norms and biases do no matmul work.
    """
    v, d, layers, n, k, h, f, mats = _dims(model)
    per_layer = d * n * h + 2 * d * k * h + n * h * d + mats * d * f
    return layers * per_layer + d * v


def total_params(model: Mapping[str, Any]) -> int:
    """Every trainable parameter: matmul weights, embedding, norms, biases, positions, lm head."""
    v, d, layers, n, k, h, f, mats = _dims(model)
    norm = 2 * d if model.get("norm", "rmsnorm") == "layernorm" else d  # layernorm has a bias
    per_layer = d * n * h + 2 * d * k * h + n * h * d + mats * d * f + 2 * norm
    if model.get("use_bias", False):
        # q, k, v, o biases, then the MLP's hidden biases (1 or 2 matrices into F) and output bias.
        per_layer += n * h + 2 * k * h + d + (mats - 1) * f + d
    total = layers * per_layer + norm + v * d  # final norm + token embedding
    if model.get("position") == "learned":
        total += int(model["max_len"]) * d
    if not model.get("tie_embeddings", False):
        total += d * v
    return total


def train_flops_per_token(model: Mapping[str, Any], seq_len: int) -> float:
    """Training FLOPs per token: 6*P_matmul + 6*L*T*N*H.

    6 = 2 (multiply-add) * 3 (forward + two backward matmuls, for inputs and for weights).
    Attention scores QK^T and the weighted sum AV each cost 2*T*N*H per token forward, so
    3 * (2+2)*T*N*H = 12*L*T*N*H for training, halved because a causal mask leaves half the pairs.
    """
    _, _, layers, n, _, h, _, _ = _dims(model)
    return 6.0 * matmul_params(model) + 6.0 * layers * seq_len * n * h


def peak_flops_for_kind(device_kind: str) -> tuple[str, float] | None:
    """(PEAK_FLOPS key, peak) for a jax device_kind string, or None if no rule matches."""
    kind = device_kind.lower().strip()
    for pattern, key in _KIND_RULES:
        if re.search(pattern, kind):
            return key, PEAK_FLOPS[key]
    return None


def mfu(
    tokens_per_s: float, flops_per_token: float, num_devices: int, peak_per_device: float
) -> float:
    """Achieved / peak FLOP/s as a fraction in [0, 1]; nan when the peak is unknown."""
    peak = num_devices * peak_per_device
    if not math.isfinite(peak) or peak <= 0:
        return math.nan
    return tokens_per_s * flops_per_token / peak


def format_mfu(value: float) -> str:
    """An MFU number with the convention it was computed under, for summaries and logs."""
    return f"MFU {100 * value:.2f}% ({MFU_CONVENTION})"


def cpu_peak_cache_path() -> Path:
    """Where measured CPU peaks are cached; follows $HOME at call time so tests can redirect it."""
    return Path(os.path.expanduser("~")) / ".cache" / "llmos_jax" / "cpu_peak.json"


def _cpu_key() -> str:
    """The cache key: CPU model name and logical core count (a different machine re-measures)."""
    name = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        name = platform.processor() or name
    return f"{name} | cpus={os.cpu_count()}"


def measure_cpu_flops(n: int = _CPU_MATMUL_N, repeats: int = 5) -> float:
    """Best-of-`repeats` f32 FLOP/s of a jitted n*n matmul on one jax CPU device.

    One device's matmul already uses all cores through XLA's shared thread pool, so this is the
    machine's total matmul throughput, not one virtual device's share.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    dev = jax.local_devices(backend="cpu")[0]
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((n, n), dtype=np.float32), dev)
    b = jax.device_put(rng.standard_normal((n, n), dtype=np.float32), dev)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()  # compile and warm the thread pool outside the timing
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def cpu_total_flops() -> tuple[float, str]:
    """Total CPU matmul FLOP/s of this machine: env override, else cache, else measured once."""
    env = os.environ.get(CPU_PEAK_ENV)
    if env:
        return float(env), f"${CPU_PEAK_ENV}={env}"
    key = _cpu_key()
    path = cpu_peak_cache_path()
    if key in _cpu_memo:
        return _cpu_memo[key], f"measured f32 matmul, cached in {path}"
    cache: dict[str, Any] = {}
    try:
        cache = json.loads(path.read_text())
        value = float(cache[key]["flops"])
        _cpu_memo[key] = value
        return value, f"measured f32 matmul, cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # No usable cache entry: measure.
    value = measure_cpu_flops()
    _cpu_memo[key] = value
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"flops": value, "matmul_n": _CPU_MATMUL_N, "measured_at": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # Atomic: concurrent hosts never see halves.
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, path)
        where = f"measured f32 matmul {_CPU_MATMUL_N}^3, cached in {path}"
    except OSError:
        where = f"measured f32 matmul {_CPU_MATMUL_N}^3 (cache {path} not writable)"
    return value, where


def peak_flops(device: Any = None) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number came from) for a jax Device (default: first).

    CPU devices created by --xla_force_host_platform_device_count share the same cores, so each
    gets the measured machine total divided by the number of local CPU devices. Unknown
    accelerators give (nan, ...) so MFU shows as nan rather than a crash or a made-up number.
    """
    import jax

    if device is None:
        device = jax.devices()[0]
    kind = str(getattr(device, "device_kind", device))
    if getattr(device, "platform", "") == "cpu":
        total, where = cpu_total_flops()
        n = len(jax.local_devices(backend="cpu"))
        return total / n, f"CPU {total / 1e9:.1f} GFLOP/s total / {n} CPU devices ({where})"
    hit = peak_flops_for_kind(kind)
    if hit is None:
        return math.nan, f"unknown device kind {kind!r}: no peak FLOP/s, MFU is nan"
    key, value = hit
    return value, f"{kind!r} -> {key}: {value / 1e12:.0f} TFLOP/s dense bf16 (datasheet)"
