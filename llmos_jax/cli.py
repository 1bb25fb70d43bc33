"""`llmos` command line: train, eval, generate, demo, convert, serve, chat.

llmos train --config configs/clm/tiny.py[:ARG] [--config.train.steps=100 ...] --workdir DIR
llmos train --resume-from RUN [--workdir NEW]   (RUN's own config: resume it, or re-run it in NEW)
llmos ckpt info RUN | llmos ckpt verify RUN     (steps, sizes, manifest | checksums of every file)
llmos eval --workdir DIR
llmos generate --workdir DIR --prompt "The for statement" [--prompt ...] [--temperature 0]
llmos demo [--workdir runs/demo]
llmos convert --from-hf HF_DIR --workdir DIR    (or: --workdir DIR --to-hf HF_DIR)
llmos serve --workdir DIR [--port 8000] [--max-batch 8] [--api-key KEY]   (OpenAI-compatible API)
llmos chat --workdir DIR                        (terminal chat; /reset, /exit)

eval, generate, serve and chat also take a Hugging Face GPT-2 / Llama model directory as --workdir.
"""

from __future__ import annotations

import argparse
import os
import sys

SAMPLE_SEPARATOR = "-" * 3  # printed between the samples of a batch of prompts
DEMO_PROMPTS = ("The for statement", "Exceptions are raised", "A class definition")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=value` / `--config.a.b value` overrides from the other arguments."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {arg} needs a value")
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) an experiment")
    t.add_argument("--config", help="configs/FILE.py[:ARG] (not with --resume-from)")
    t.add_argument("--workdir", help="run directory (local path or gs://)")
    t.add_argument(
        "--resume-from",
        metavar="RUN",
        help="take the config (and tokenizer) from run directory RUN; resume RUN itself, or "
        "re-run the experiment from scratch into --workdir",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host run: call jax.distributed.initialize() first (auto-detects "
        "TPU pods, SLURM and GKE; or set JAX_COORDINATOR_ADDRESS etc.)",
    )
    e = sub.add_parser("eval", help="held-out perplexity of a run's latest checkpoint")
    e.add_argument("--workdir", required=True)
    g = sub.add_parser("generate", help="sample continuations from a run's latest checkpoint")
    g.add_argument("--workdir", required=True)
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="0 = off")
    g.add_argument("--top-p", type=float, default=None, help="1 = off")
    g.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("demo", help="train the tiny CLM on Python's docs, evaluate, sample")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--config", default=None, help="defaults to configs/clm/tiny.py")
    c = sub.add_parser("convert", help="Hugging Face GPT-2 / Llama directory <-> run directory")
    c.add_argument("--workdir", required=True, help="run directory: created by --from-hf")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="HF_DIR", help="import config.json + safetensors")
    way.add_argument("--to-hf", metavar="HF_DIR", help="export the run's latest params")
    c.add_argument("--max-shard-mb", type=int, default=0, help="--to-hf shard size; 0 = 1 file")
    k = sub.add_parser("ckpt", help="inspect or verify a run's checkpoints")
    ksub = k.add_subparsers(dest="ckpt_command", required=True)
    ki = ksub.add_parser("info", help="steps, sizes and the manifest (provenance)")
    ki.add_argument("run", help="run directory (local path or gs://)")
    ki.add_argument("--step", type=int, default=None, help="whose manifest (default: newest)")
    ki.add_argument("--json", action="store_true", help="machine-readable")
    kv = ksub.add_parser("verify", help="compare every file with its manifest's sha256")
    kv.add_argument("run", help="run directory (local path or gs://)")
    kv.add_argument("--step", type=int, action="append", help="repeatable; default: all")
    from llmos_jax.serve import commands as serve_commands  # argparse only; imports lazily

    serve_commands.add_parsers(sub)
    return p


def _train_config(args, overrides: list[str]):
    """(config, workdir) for train / demo: from a config file, or from --resume-from RUN."""
    from llmos_jax.config import load_config

    resume = getattr(args, "resume_from", None)
    if not resume:
        if args.command == "train" and not (args.config and args.workdir):
            raise SystemExit("error: train needs --config and --workdir (or --resume-from RUN)")
        return load_config(args.config or "configs/clm/tiny.py", overrides), args.workdir
    if args.config:
        raise SystemExit(
            "error: --resume-from uses the run's own config.json; drop --config "
            "(--config.a.b=value still overrides single fields)"
        )
    from llmos_jax import checkpoint, provenance

    workdir = args.workdir or resume
    config, recorded = provenance.config_from_run(resume, workdir, overrides)
    # With a checkpoint to resume from, the loop compares against that checkpoint's manifest.
    if recorded and not checkpoint.has_checkpoint(workdir):
        changed = provenance.differences(recorded, provenance.collect(config))
        if changed:
            print(f"warning: {resume} was run differently: " + "; ".join(changed), file=sys.stderr)
    return config, workdir


def _sample(run, prompts, args) -> list[str]:
    import jax

    from llmos_jax.sampling import SampleOptions, generate, generation_mode

    s = run.config.sample
    opts = SampleOptions(
        max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else s.max_new_tokens,
        temperature=args.temperature if args.temperature is not None else s.temperature,
        top_k=args.top_k if args.top_k is not None else s.top_k,
        top_p=args.top_p if args.top_p is not None else s.top_p,
    )
    tok = run.tokenizer
    ids = [[tok.bos_id] + tok.encode(p) for p in prompts]
    outs = generate(
        run.experiment.eval_model,
        run.params,
        ids,
        eos_id=tok.eos_id,
        rng=jax.random.PRNGKey(args.seed),
        options=opts,
        bidirectional_prompt=generation_mode(run.config),
    )
    return [tok.decode(o) for o in outs]


def _eval_run(run) -> dict:
    from llmos_jax.data import Tokenizer, build_data, eval_batches, unigram_perplexity
    from llmos_jax.train.loop import evaluate

    c = run.config
    if isinstance(run.tokenizer, Tokenizer):
        data = build_data(c, run.workdir)  # reuses the run's own tokenizer.model
        train_rows, eval_rows = data.train, data.eval
    else:  # a Hugging Face tokenizer: same documents and split, its own ids
        from llmos_jax.interop import tokenized_splits

        train_rows, eval_rows = tokenized_splits(c, run.tokenizer)
    batches = eval_batches(eval_rows, c.train.global_batch_size, 0, 1, c.train.eval_batches)
    out = evaluate(run.experiment, run.params, {}, batches, tokenizer=run.tokenizer)
    out["eval/unigram_perplexity"] = unigram_perplexity(train_rows, eval_rows, c.model.vocab_size)
    out["step"] = run.step
    return out


def _print_eval(res: dict) -> None:
    ratio = res["eval/unigram_perplexity"] / res["eval/perplexity"]
    print(
        f"step {res['step']}: held-out loss {res['eval/loss']:.4f}, "
        f"perplexity {res['eval/perplexity']:.2f} vs unigram baseline "
        f"{res['eval/unigram_perplexity']:.2f} ({ratio:.1f}x lower) over "
        f"{int(res['eval/tokens'])} tokens"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if getattr(args, "workdir", None) and "://" not in args.workdir:
        # Orbax (OCDBT) only accepts absolute local paths; cloud URLs pass through unchanged.
        args.workdir = os.path.abspath(args.workdir)
    from llmos_jax.config import ConfigError

    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()
    if args.command in ("train", "demo", "eval", "generate", "serve", "chat"):
        from llmos_jax.host_memory import tune_malloc_for_cpu

        tune_malloc_for_cpu()  # XLA's CPU temporaries: no page faults on every call
    try:
        if args.command in ("train", "demo"):
            from llmos_jax.train.loop import train

            config, args.workdir = _train_config(args, overrides)
            final = train(
                config, args.workdir, show_progress=not getattr(args, "no_progress", False)
            )
            if "train/preempted_at_step" in final:
                return 0  # saved; the loop printed how to resume
            if args.command == "train":
                print({k: round(v, 4) for k, v in final.items() if k.startswith("eval/")})
                return 0
            from llmos_jax.runs import load_run
            from llmos_jax.sampling import can_generate

            run = load_run(args.workdir)
            _print_eval(_eval_run(run))
            if not can_generate(run.config):
                print(f"\nRun directory: {args.workdir} (no samples: the model does not generate)")
                return 0
            args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed = (
                48,
                0.7,
                40,
                0.95,
                0,
            )
            for prompt, text in zip(DEMO_PROMPTS, _sample(run, list(DEMO_PROMPTS), args)):
                print(f"\n--- {prompt!r} ->\n{prompt}{text}")
            print(
                f"\nRun directory: {args.workdir} (config.json, tokenizer.model, metrics.jsonl, "
                f"checkpoints/). Try: llmos generate --workdir {args.workdir} --prompt '...'"
            )
            return 0
        if args.command == "convert":
            from llmos_jax import interop

            if args.from_hf:
                interop.import_hf(args.from_hf, args.workdir, overrides)
                print(f"{args.from_hf} -> run directory {args.workdir} (checkpoint step 0)")
            else:
                shard = args.max_shard_mb << 20
                files = interop.export_hf(args.workdir, args.to_hf, overrides, shard)
                print(f"{args.workdir} -> {args.to_hf}: {', '.join(files)}")
            return 0
        if args.command == "ckpt":
            from llmos_jax import checkpoint_inspect

            if args.ckpt_command == "info":
                print(checkpoint_inspect.info(args.run, args.step, args.json))
                return 0
            ok, report = checkpoint_inspect.verify(args.run, args.step)
            print(report)
            return 0 if ok else 1
        if args.command in ("serve", "chat"):
            from llmos_jax.serve import commands as serve_commands

            return getattr(serve_commands, args.command)(args, overrides)
        from llmos_jax.runs import load_run

        run = load_run(args.workdir, overrides)
        if args.command == "eval":
            _print_eval(_eval_run(run))
        elif args.command == "generate":
            samples = [f"{p}{t}" for p, t in zip(args.prompt, _sample(run, args.prompt, args))]
            print(f"\n{SAMPLE_SEPARATOR}\n".join(samples))
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
