"""What the benchmark varies around a preset's plain row. --knobs rows (KNOBS) change config
fields or apply in-script variants: copies of library code with one change each, monkeypatched
only while the row that asks for them is built and traced, so a proposed library change can be
measured without editing llmos_jax/. --sweep rows (SWEEP) change XLA flags or the virtual device
count, which XLA reads once before its backend starts, so sweep() runs each in a fresh process of
the entry point and collects its JSON line. jax is imported inside the functions: this module is
imported before the flags are parsed, and the sweep parent never starts jax.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from report import pct

SCRIPT = Path(__file__).resolve().with_name("train_throughput.py")


# In-process knob rows (--knobs): label -> (config overrides, in-script variants). The
# "dense2d-wgrad" and "attn-causal-blocks" rows began as in-script variants and are now the
# library's CPU options (llmos_jax/models/cpu_kernels.py); their labels are kept so that the
# commands recorded in docs/benchmarks.md still run.
DENSE2D_WGRAD = ("model.matmul_impl=dense2d",)
CAUSAL_BLOCKS = ("model.attention_impl=causal_blocks",)
UNROLLED = ("model.scan_layers=False",)
KNOBS = {
    "scan_layers=False": (UNROLLED, ()),
    "remat=dots": (("model.remat=dots",), ()),
    "remat=full": (("model.remat=full",), ()),
    "attention_impl=xla": (("model.attention_impl=xla",), ()),
    "variant dense2d": (DENSE2D_WGRAD, ("dense2d",)),
    "variant attn-einsum": ((), ("attn-einsum",)),
    "dense2d + scan_layers=False": (UNROLLED + DENSE2D_WGRAD, ("dense2d",)),
    "dense2d-wgrad + scan_layers=False": (UNROLLED + DENSE2D_WGRAD, ()),
    "variant attn-causal-blocks": (CAUSAL_BLOCKS, ()),
    "dense2d-wgrad + attn-causal-blocks + scan_layers=False": (
        UNROLLED + DENSE2D_WGRAD + CAUSAL_BLOCKS,
        (),
    ),
    "dense2d + attn-einsum + scan_layers=False": (
        UNROLLED + DENSE2D_WGRAD,
        ("dense2d", "attn-einsum"),
    ),
    "cpu options": (DENSE2D_WGRAD + CAUSAL_BLOCKS + UNROLLED, ()),
}


# --------------------------------------------------------------------------------------------
# In-script variants of library code (--knobs, --variant).


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
    "dense2d": "with model.matmul_impl=dense2d (one 2-D matmul per layer): the plain autodiff "
    "weight gradient instead of the row-major one (cpu_kernels._matmul swapped for `@`)",
    "attn-einsum": "attention as einsum + additive [B,1,T,S] mask bias + softmax + einsum",
}


@contextlib.contextmanager
def variants_applied(names):
    """Monkeypatches the named variants in, and restores the library afterwards."""
    import jax

    from llmos_jax.models import cpu_kernels

    saved = (jax.nn.dot_product_attention, cpu_kernels._matmul)
    try:
        for name in names:
            if name == "dense2d":  # einsum_2d looks _matmul up at trace time
                cpu_kernels._matmul = lambda a, b: a @ b
            elif name == "attn-einsum":
                jax.nn.dot_product_attention = _einsum_attention(saved[0])
            else:
                raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        yield
    finally:
        jax.nn.dot_product_attention, cpu_kernels._matmul = saved


# --------------------------------------------------------------------------------------------
# Sweep: XLA flags and device counts, one fresh process each.


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
        cmd = [sys.executable, str(SCRIPT), "--json", "--presets", "cpu-ref"]
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
                f"{pct(r['other_load'])} |"
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
