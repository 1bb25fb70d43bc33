"""FLOP and parameter accounting against hand counts and Hugging Face models; peaks; MFU."""

from __future__ import annotations

import json
import math

import jax
import pytest

from llmos_jax import config as config_lib
from llmos_jax import perf


def _model(family: str, **overrides) -> dict:
    m = config_lib.base_config().model
    m.family = family
    for k, v in overrides.items():
        m[k] = v
    return config_lib.resolved_model(m)


# GPT-2 small-ish: V=128, D=64, L=2, N=K=4, H=16, F=256, max_len=64, tied, learned positions.
GPT2 = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, max_len=64)
# Llama with grouped-query attention: K=2 < N=4, F=128, untied, rope.
LLAMA = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)


def test_gpt2_counts_by_hand():
    m = _model("gpt2", **GPT2)
    assert (m["mlp"], m["tie_embeddings"], m["position"]) == ("gelu", True, "learned")
    attn = 64 * 64 * 4  # q, k, v, o: all 64x64 since K = N
    mlp = 2 * 64 * 256
    assert perf.matmul_params(m) == 2 * (attn + mlp) + 64 * 128
    biases = 3 * 64 + 64 + 256 + 64
    norms = 2 * (2 * 64)  # two layernorms per layer, scale + bias each
    per_layer = attn + mlp + biases + norms
    expected = 2 * per_layer + 2 * 64 + 128 * 64 + 64 * 64  # final norm, wte, wpe; tied head
    assert perf.total_params(m) == expected == 112384


def test_llama_counts_by_hand():
    m = _model("llama", **LLAMA)
    assert (m["mlp"], m["tie_embeddings"], m["position"]) == ("swiglu", False, "rope")
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64  # q, k and v with 2 kv heads of 16, o
    mlp = 3 * 64 * 128
    assert perf.matmul_params(m) == 2 * (attn + mlp) + 64 * 128
    expected = 2 * (attn + mlp + 2 * 64) + 64 + 2 * 128 * 64  # rmsnorms; embedding + head
    assert perf.total_params(m) == expected


def test_tying_and_positions_change_total_not_matmul():
    tied = _model("llama", **LLAMA, tie_embeddings=True)
    untied = _model("llama", **LLAMA)
    assert perf.matmul_params(tied) == perf.matmul_params(untied)
    assert perf.total_params(untied) - perf.total_params(tied) == 64 * 128
    learned = _model("llama", **LLAMA, position="learned")
    assert perf.total_params(learned) - perf.total_params(untied) == 512 * 64


def _hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied weights


def test_gpt2_total_matches_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    ours = _model("gpt2", **GPT2)
    assert perf.total_params(ours) == _hf_count(transformers.GPT2LMHeadModel(hf))


def test_llama_total_matches_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=False,
    )
    assert perf.total_params(_model("llama", **LLAMA)) == _hf_count(
        transformers.LlamaForCausalLM(hf)
    )


def test_train_flops_per_token():
    m = _model("llama", **LLAMA)
    p = (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) * 2 + 64 * 128
    t = 32
    # Per layer and token, forward QK^T and AV cost 2*T*N*H each; training is 3x forward; a
    # causal mask halves it. Two layers, N=4 heads of H=16.
    attention = 2 * 3 * (2 + 2) * t * 4 * 16 / 2
    assert perf.train_flops_per_token(m, t) == 6 * p + attention


@pytest.mark.parametrize(
    "kind,key",
    [
        ("TPU v4", "TPU v4"),
        ("TPU v5 lite", "TPU v5e"),
        ("TPU v5e", "TPU v5e"),
        ("TPU v5", "TPU v5p"),
        ("TPU v5p", "TPU v5p"),
        ("TPU v6 lite", "TPU v6e"),
        ("TPU v6e", "TPU v6e"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
    ],
)
def test_peak_table_lookup(kind, key):
    expected = {
        "TPU v4": 275e12,
        "TPU v5e": 197e12,
        "TPU v5p": 459e12,
        "TPU v6e": 918e12,
        "A100": 312e12,
        "H100 SXM": 989e12,
        "H100 PCIe": 756e12,
        "H200": 989e12,
    }
    assert perf.peak_flops_for_kind(kind) == (key, expected[key])


class _FakeDevice:
    platform = "gpu"

    def __init__(self, kind: str):
        self.device_kind = kind


def test_peak_flops_accelerators_and_unknown():
    value, where = perf.peak_flops(_FakeDevice("NVIDIA H100 80GB HBM3"))
    assert value == 989e12 and "H100" in where
    value, where = perf.peak_flops(_FakeDevice("TPU v4 lite"))  # v4i: not in the table
    assert math.isnan(value) and "unknown device kind" in where
    assert math.isnan(perf.mfu(1e5, 1e9, 4, value))


@pytest.fixture
def cpu_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(perf.CPU_PEAK_ENV, raising=False)
    monkeypatch.setattr(perf, "_cpu_memo", {})
    return tmp_path / ".cache" / "llmos_jax" / "cpu_peak.json"


def test_cpu_peak_measured_cached_and_split(cpu_cache, monkeypatch):
    n_cpu = len(jax.local_devices(backend="cpu"))
    per_device, where = perf.peak_flops(jax.local_devices(backend="cpu")[0])
    assert per_device > 0 and math.isfinite(per_device) and "measured" in where
    cache = json.loads(cpu_cache.read_text())
    (entry,) = cache.values()
    assert entry["flops"] == pytest.approx(per_device * n_cpu)
    # A fresh process (memo cleared) reads the cache instead of measuring again.
    monkeypatch.setattr(perf, "_cpu_memo", {})
    monkeypatch.setattr(perf, "measure_cpu_flops", lambda *a, **k: pytest.fail("re-measured"))
    again, where = perf.peak_flops(jax.local_devices(backend="cpu")[0])
    assert again == per_device and "cached" in where


def test_cpu_peak_env_override(cpu_cache, monkeypatch):
    monkeypatch.setenv(perf.CPU_PEAK_ENV, "8e11")
    monkeypatch.setattr(perf, "measure_cpu_flops", lambda *a, **k: pytest.fail("measured"))
    n_cpu = len(jax.local_devices(backend="cpu"))
    value, where = perf.peak_flops(jax.local_devices(backend="cpu")[0])
    assert value == pytest.approx(8e11 / n_cpu) and perf.CPU_PEAK_ENV in where
    assert not cpu_cache.exists()


def test_mfu_arithmetic():
    # 1000 tok/s * 1e9 FLOP/tok = 1e12 FLOP/s achieved, over 4 chips of 1e12 -> 25%.
    assert perf.mfu(1000.0, 1e9, 4, 1e12) == pytest.approx(0.25)
    assert math.isnan(perf.mfu(1000.0, 1e9, 4, 0.0))
    assert perf.MFU_CONVENTION in perf.format_mfu(0.25) and "25.00%" in perf.format_mfu(0.25)
