"""CLM vs MLM vs permuted LM vs span corruption at matched compute, then the same downstream probe.

Question: on the default corpus (Python's documentation), with the same backbone size, the same
tokens and the same steps, which pretraining objective gives the best encoder for a downstream
task, read out by a frozen linear probe and by a short fine-tune?

    .venv/bin/pip install -e ".[experiments]"   # matplotlib, for the plot
    .venv/bin/python experiments/objectives/ablation.py                 # 4 objectives x 3 seeds
    .venv/bin/python experiments/objectives/ablation.py --seeds 0 --steps 20 --out /tmp/abl  # smoke

Each run is `llmos_jax.train.train` on the objective's own configs/<objective>/tiny.py with the
shared overrides below (so one size, one tokenizer, one data pipeline and one optimizer for all),
into --workdir/<objective>-s<seed> (an existing finished run is reused, not retrained). The probe
(llmos_jax/evals/probe.py) classifies which of 8 documentation topics a 64-token passage comes
from. A randomly initialised backbone is probed too, as the floor that pretraining must beat.

Writes into --out: results.json (every number of every seed), results.md (the table) and
loss_curves.png (held-out loss of each objective over steps, mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

OBJECTIVES = {
    "clm": "configs/clm/tiny.py",
    "mlm": "configs/mlm/tiny.py",
    "plm": "configs/plm/tiny.py",
    "span": "configs/span/tiny.py",
}
LABELS = {
    "random": "none (random init)",
    "clm": "causal LM",
    "mlm": "masked LM (BERT)",
    "plm": "permuted LM (XLNet)",
    "span": "span corruption (T5)",
}


def shared_overrides(args) -> list[str]:
    """What every objective shares: size, data, tokenizer, optimizer, steps."""
    from llmos_jax.objectives.corruption import sentinel_symbols

    # One tokenizer for all: "<mask>" and T5's sentinels reserved in every run.
    symbols = ("<mask>", *sentinel_symbols(16))
    return [
        "model.family=llama",
        f"model.d_model={args.d_model}",
        "model.n_heads=4",
        "model.n_kv_heads=4",
        f"model.d_ff={args.d_model * 3}",
        "model.vocab_size=2048",
        f"model.max_len={args.seq_len}",
        f"data.seq_len={args.seq_len}",
        f"data.tokenizer.user_defined_symbols={symbols!r}",
        f"train.steps={args.steps}",
        f"train.global_batch_size={args.batch}",
        "train.log_every=10",
        f"train.eval_every={max(10, args.steps // 6)}",
        f"train.checkpoint_every={args.steps}",
        "train.eval_batches=0",
        f"optim.lr={args.lr}",
        f"optim.warmup_steps={max(1, args.steps // 10)}",
        "wandb.mode=disabled",
    ]


def make_config(objective: str, seed: int, args):
    from llmos_jax.config import apply_override, load_config

    config = load_config(str(REPO / OBJECTIVES[objective]))
    # Matched parameters: the encoder-decoder splits the depth between its two stacks (its
    # cross-attention adds about a tenth; the table reports every count).
    layers = args.layers // 2 if objective == "span" else args.layers
    for item in [*shared_overrides(args), f"model.n_layers={layers}", f"seed={seed}"]:
        apply_override(config, item)
    return config


def read_curve(workdir: Path) -> list[tuple[int, float]]:
    """(step, eval/loss) of every evaluated step in the run's metrics.jsonl."""
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    return [(int(r["step"]), float(r["eval/loss"])) for r in rows if "eval/loss" in r]


def count_params(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


def probe_run(config, params, tokenizer, seed: int, args) -> dict[str, float]:
    from llmos_jax.evals import fine_tune, linear_probe, pooled_features, topic_dataset

    data = topic_dataset(tokenizer, args.probe_len, per_topic=args.per_topic, seed=seed)
    train_x = pooled_features(config, params, data.train)
    test_x = pooled_features(config, params, data.test)
    probe = linear_probe(train_x, data.train_labels, test_x, data.test_labels, data.num_classes)
    # LP-FT: the fine-tune starts from the probe's head, so it starts at the probe's accuracy.
    tuned = fine_tune(
        config, params, data, args.finetune_steps, args.finetune_lr, seed=seed, head=probe["head"]
    )
    return {
        "probe/train_accuracy": probe["train_accuracy"],
        "probe/test_accuracy": probe["test_accuracy"],
        "finetune/test_accuracy": tuned["test_accuracy"],
        "probe/chance": 1.0 / data.num_classes,
    }


def run_one(objective: str, seed: int, args) -> dict:
    from llmos_jax.runs import load_run
    from llmos_jax.train.loop import train

    workdir = Path(args.workdir).resolve() / f"{objective}-s{seed}"
    config = make_config(objective, seed, args)
    t0 = time.perf_counter()
    train(config, str(workdir), show_progress=False)
    train_s = time.perf_counter() - t0
    run = load_run(str(workdir))
    curve = read_curve(workdir)
    out = {
        "objective": objective,
        "seed": seed,
        "params": count_params(run.params),
        "tokens": args.steps * args.batch * args.seq_len,
        "train_s": train_s,
        "eval/loss": curve[-1][1],
        "curve": curve,
    }
    out.update(probe_run(run.config, run.params, run.tokenizer, seed, args))
    if objective == "mlm":  # the floor: the same bidirectional backbone, untrained
        out["random"] = random_baseline(run, seed, args)
    return out


def random_baseline(run, seed: int, args) -> dict:
    from llmos_jax.train.init import init_train_state

    exp = run.experiment
    state, _ = init_train_state(exp.eval_model, exp.tx, exp.mesh, exp.rules, args.seq_len, seed)
    res = probe_run(run.config, state.params, run.tokenizer, seed, args)
    return {"objective": "random", "seed": seed, "params": count_params(state.params), **res}


def mean_std(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: list[dict], args) -> str:
    rows = [r["random"] for r in results if "random" in r] + results
    lines = [
        "| objective | params | held-out loss (own objective) | linear probe acc. | "
        "fine-tune acc. | train time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in LABELS:
        rs = [r for r in rows if r["objective"] == name]
        if not rs:
            continue
        loss = mean_std(r["eval/loss"] for r in rs) if "eval/loss" in rs[0] else "–"
        secs = f"{statistics.mean(r['train_s'] for r in rs):.0f}" if "train_s" in rs[0] else "–"
        lines.append(
            f"| {LABELS[name]} | {rs[0]['params'] / 1e6:.2f}M | {loss} | "
            f"{mean_std(r['probe/test_accuracy'] for r in rs)} | "
            f"{mean_std(r['finetune/test_accuracy'] for r in rs)} | {secs} |"
        )
    seeds = sorted({r["seed"] for r in results})
    chance = results[0]["probe/chance"]
    lines += [
        "",
        f"Mean ± sample std over seeds {seeds}. Pretraining: {args.steps} steps x "
        f"{args.batch} rows x {args.seq_len} tokens, d_model={args.d_model}, "
        f"{args.layers} layers ({args.layers // 2}+{args.layers // 2} for span). Probe: "
        f"8-way topic classification, chance {chance:.3f}, {args.per_topic} rows of "
        f"{args.probe_len} tokens per topic, half held out; fine-tune {args.finetune_steps} "
        f"steps at lr {args.finetune_lr:g} from the probe's head (LP-FT). Held-out losses "
        "are each objective's own loss (nats per predicted token): not comparable across rows.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in OBJECTIVES:
        curves = [r["curve"] for r in results if r["objective"] == name]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        losses = np.asarray([[v for _, v in c] for c in curves])
        mean, std = losses.mean(0), losses.std(0)
        ax.plot(steps, mean, marker="o", ms=3, label=LABELS[name])
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats per predicted token)")
    ax.set_title("Held-out loss of each objective (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--probe-len", type=int, default=64)
    p.add_argument("--per-topic", type=int, default=40)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--workdir", default="runs/ablation")
    p.add_argument("--out", default=str(Path(__file__).parent))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    objectives = args.objectives.split(",")
    unknown = sorted(set(objectives) - set(OBJECTIVES))
    if unknown:
        raise SystemExit(f"--objectives: unknown {unknown}; known: {sorted(OBJECTIVES)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for objective in objectives:
            r = run_one(objective, seed, args)
            print(
                f"{objective} seed {seed}: eval/loss {r['eval/loss']:.3f}, probe "
                f"{r['probe/test_accuracy']:.3f}, fine-tune {r['finetune/test_accuracy']:.3f}, "
                f"{r['train_s']:.0f}s",
                flush=True,
            )
            results.append(r)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results, args))
    try:
        plot(results, out / "loss_curves.png")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    print(table(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
