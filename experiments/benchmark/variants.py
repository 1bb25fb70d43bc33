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
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

from report import pct

SCRIPT = Path(__file__).resolve().with_name("train_throughput.py")


# In-process knob rows (--knobs): label -> (config overrides, in-script variants).
KNOBS = {
    "scan_layers=False": (("model.scan_layers=False",), ()),
    "remat=dots": (("model.remat=dots",), ()),
    "remat=full": (("model.remat=full",), ()),
    "attention_impl=xla": (("model.attention_impl=xla",), ()),
    "variant dense2d": ((), ("dense2d",)),
    "variant attn-einsum": ((), ("attn-einsum",)),
    "dense2d + scan_layers=False": (("model.scan_layers=False",), ("dense2d",)),
    "dense2d-wgrad + scan_layers=False": (("model.scan_layers=False",), ("dense2d-wgrad",)),
    "variant attn-causal-blocks": ((), ("attn-causal-blocks",)),
    "dense2d-wgrad + attn-causal-blocks + scan_layers=False": (
        ("model.scan_layers=False",),
        ("dense2d-wgrad", "attn-causal-blocks"),
    ),
    "dense2d + attn-einsum + scan_layers=False": (
        ("model.scan_layers=False",),
        ("dense2d", "attn-einsum"),
    ),
    # The library's CPU options (llmos_jax/models/cpu_kernels.py), what configs/clm/tiny.py sets.
    "cpu options": (
        (
            "model.matmul_impl=dense2d",
            "model.attention_impl=causal_blocks",
            "model.scan_layers=False",
        ),
        (),
    ),
}


# --------------------------------------------------------------------------------------------
# In-script variants of library code (--knobs, --variant).


def _matmul_transposed_copy_wgrad():
    """x @ w whose weight gradient multiplies an explicit, materialised copy of x^T.

    XLA:CPU hands the autodiff weight gradient x^T @ dy to its matmul kernel as a dot that
    contracts dimension 0 of x, which runs at about half the speed of a plain row-major matmul;
    transposing x first (an optimization_barrier keeps XLA from folding the transpose back into
    the dot) costs a fraction of that."""
    import jax

    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(res, g):
        x, w = res
        dx = g @ w.T  # a transposed right-hand side is fast already
        dw = jax.lax.optimization_barrier(x.T) @ g
        return dx.astype(x.dtype), dw.astype(w.dtype)

    matmul.defvjp(fwd, bwd)
    return matmul


def _dense2d_class(fast_wgrad: bool = False):
    """layers.Einsum computed as ONE 2-D matmul: [prod(batch), prod(contracted)] @
    [prod(contracted), prod(out)], reshaped back. Same parameters (names, shapes, init) and the
    same math as the einsum; XLA's CPU backend gets 2-D dots whose gradients need no transposes
    of 3-D/4-D activations (the einsum's separate batch dims B, T force such copies)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from llmos_jax.models import layers

    matmul = _matmul_transposed_copy_wgrad() if fast_wgrad else (lambda a, b: a @ b)

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
                y = matmul(xd.reshape(math.prod(lead), -1), kd.reshape(-1, math.prod(kshape)))
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


def _causal_block_attention(original, blocks: int = 4):
    """Causal self-attention (T == S, no cache) in `blocks` query blocks: block i attends only to
    keys [0, (i+1)*T/blocks), so the upper-triangle blocks that a causal mask zeroes anyway are
    never computed (10/16 of the work at 4 blocks). Each block is jax's own attention on a slice
    of q, k, v and the mask; exact for any mask that is causal (plus segment restrictions).
    In the library this would be chosen by the model (cfg.causal and no KV cache); here it
    assumes every T == S call is causal, which holds for the decoder's training forward."""
    import jax.numpy as jnp

    def attention(query, key, value, bias=None, mask=None, **kwargs):
        t, s = query.shape[1], key.shape[1]
        if bias is not None or mask is None or t != s or t % blocks or t // blocks < 16:
            return original(query, key, value, bias=bias, mask=mask, **kwargs)
        bs = t // blocks
        outs = []
        for i in range(blocks):
            q_i = query[:, i * bs : (i + 1) * bs]
            end = (i + 1) * bs
            m_i = mask[:, :, i * bs : (i + 1) * bs, :end]
            outs.append(original(q_i, key[:, :end], value[:, :end], mask=m_i, **kwargs))
        return jnp.concatenate(outs, axis=1)

    return attention


VARIANTS = {
    "dense2d": "layers.Einsum as one 2-D matmul (batch and contracted dims flattened)",
    "dense2d-wgrad": "dense2d, and its weight gradient multiplies a materialised copy of x^T "
    "(custom_vjp + optimization_barrier)",
    "attn-einsum": "attention as einsum + additive [B,1,T,S] mask bias + softmax + einsum",
    "attn-causal-blocks": "causal attention in 4 query blocks, each against only the keys at or "
    "before it (skips the masked upper-triangle blocks)",
}


@contextlib.contextmanager
def variants_applied(names):
    """Monkeypatches the named variants in, and restores the library afterwards."""
    import jax

    from llmos_jax.models import layers, transformer

    saved = (layers.Einsum, transformer.Einsum, jax.nn.dot_product_attention)
    try:
        for name in names:
            if name in ("dense2d", "dense2d-wgrad"):
                cls = _dense2d_class(fast_wgrad=name == "dense2d-wgrad")
                layers.Einsum = transformer.Einsum = cls  # looked up by name at trace time
            elif name == "attn-einsum":
                jax.nn.dot_product_attention = _einsum_attention(saved[2])
            elif name == "attn-causal-blocks":
                jax.nn.dot_product_attention = _causal_block_attention(saved[2])
            else:
                raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        yield
    finally:
        layers.Einsum, transformer.Einsum, jax.nn.dot_product_attention = saved


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
