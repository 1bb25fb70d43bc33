"""The Markdown the benchmark prints: the results tables, the number formats they share with
the sweep's table, and the hardware and software lines that make a result reproducible. jax and
torch are imported only inside hardware_lines, once the rows have started them.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


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


def fmt_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k"


def pct(x: float) -> str:
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
            f"| {s['impl']} | {s['preset']} | {fmt_params(s['params'])} | "
            f"{s['batch']}×{s['seq_len']} | {s['compile_s']:.1f} | {s['step_ms']:.0f} | "
            f"{s['tokens_per_s']:,.0f} | {pct(s['mfu'])} | {ratio} |"
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
            f"{pct(s['other_load'])} |"
        )
    out += ["", "Hardware:", *hw_lines, "", f"MFU convention: {conv}", f"Peak: {peak_line}"]
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"
