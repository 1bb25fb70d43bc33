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
import json
import sys
from pathlib import Path

# The parts (presets, rows, variants, profiling, report) are sibling files imported as top-level
# modules, not a package, so the script runs as a plain file. Run that way this folder is
# sys.path[0] already; inserting it keeps them importable under `python -m` or importlib too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from presets import PRESETS, finish_config, load_preset
from profiling import breakdown, profile
from report import cpu_cores, hardware_lines, markdown
from rows import OursRow, Row, TorchRow, wait_for_quiet
from variants import KNOBS, VARIANTS, sweep


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
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's malloc defaults (llmos_jax/host_memory.py; both rows share them)",
    )
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
    # As `llmos train` does (llmos_jax/host_memory.py); process-wide, so PyTorch's row gets it too.
    if not args.no_malloc_tuning:
        from llmos_jax.host_memory import tune_malloc_for_cpu

        tune_malloc_for_cpu(backend)
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
