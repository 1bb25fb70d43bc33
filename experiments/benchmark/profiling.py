"""Where the time of our train step goes (--breakdown, --profile): each part of the step jitted
and timed on its own, and a jax.profiler trace whose kernels are attributed to the source ops in
the compiled HLO's op_name metadata, then grouped by kernel kind and by model module. The grouping
regexes are approximate by nature, and read XLA:CPU's kernel names.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rows import OursRow


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
