"""Shared by the tests of the mlm, plm, span and prefix_lm objectives: tiny configs, the
sharded-vs-single-device run, a short real training run, and NumPy references."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmos_jax import objectives
from llmos_jax.config import load_config
from llmos_jax.mesh import axis_rules, host_to_global, make_mesh
from llmos_jax.models import build_model
from llmos_jax.train.init import init_train_state
from llmos_jax.train.optim import make_optimizer
from llmos_jax.train.step import jit_train_step, make_train_step
from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A short run of an objective's tiny config: a few minutes of CPU become well under a minute.
SHORT_RUN = [
    "train.steps=40",
    "train.eval_every=40",
    "train.log_every=20",
    "train.checkpoint_every=40",
    "train.eval_batches=4",
    "data.seq_len=64",
    "model.max_len=256",
    "optim.warmup_steps=5",
    "wandb.mode=disabled",
]


def objective_config(name: str, arg: str = "", family: str = "llama", **model):
    """tests.helpers.tiny_config sizes with the objective section, model.arch and reserved
    tokenizer symbols of configs/<name>/tiny.py[:arg]."""
    source = load_config(str(ROOT / "configs" / name / "tiny.py") + (f":{arg}" if arg else ""))
    c = tiny_config(family, **model)
    c.objective = source.objective
    c.model.arch = source.model.arch
    c.data.tokenizer.user_defined_symbols = source.data.tokenizer.user_defined_symbols
    return c


def init_params(config, seq_len: int = 16, seed: int = 0):
    model = build_model(config)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), *model.init_args(seq_len))
    return model, nn.meta.unbox(variables["params"])


def apply_fn(model):
    """model.apply, jitted (eager dispatch of a scanned model is slower than compiling it)."""
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args))


def as_jax(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def train_losses(config, devices, batch: dict, steps: int) -> np.ndarray:
    """train/loss of `steps` steps of config's objective on `batch`, on a mesh of `devices`."""
    mesh = make_mesh(config, devices)
    rules = axis_rules(config)
    model = build_model(config)
    tx, schedule = make_optimizer(config)
    state, shardings = init_train_state(model, tx, mesh, rules, config.data.seq_len, config.seed)
    step = jit_train_step(
        make_train_step(objectives.build(config, model), tx, schedule), shardings, mesh, rules
    )
    losses = []
    for _ in range(steps):
        state, metrics = step(state, host_to_global(batch, mesh))
        losses.append(float(metrics["train/loss"]))  # blocks: avoids the CPU collective hang
    assert float(metrics["train/update_norm"]) > 0  # past warmup's lr=0 the weights move
    return np.array(losses)


def assert_sharded_equals_single(config, batch: dict, steps: int = 3) -> None:
    """The loss on a (2, 2, 2) mesh of 8 devices equals the single-device loss, step by step
    (the masks, orders or spans drawn on device included), while the parameters move."""
    config.optim.lr = 1e-2
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    single = train_losses(config, jax.devices()[:1], batch, steps)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    sharded = train_losses(config, jax.devices()[:8], batch, steps)
    assert len(set(single.tolist())) == steps  # a fresh draw (and new weights) every step
    np.testing.assert_allclose(sharded, single, rtol=2e-5)


def numpy_xent(logits, targets, weights) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over weighted positions, in float64."""
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    w = np.asarray(weights, np.float64)
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == np.asarray(targets)
    return float((nll * w).sum() / w.sum()), float((correct * w).sum() / w.sum())


def segment_mask(seg: np.ndarray, causal: bool) -> np.ndarray:
    """[B, 1, T, T] same-segment (and key <= query) mask, built with loops."""
    b, t = seg.shape
    out = np.zeros((b, 1, t, t), bool)
    for i in range(b):
        for q in range(t):
            for k in range(t):
                out[i, 0, q, k] = seg[i, q] == seg[i, k] and (k <= q or not causal)
    return out


def numpy_corrupt_spans(tokens, seg, noise, sentinels, dec_len: int, bos: int = 2) -> dict:
    """T5 span corruption per segment, written with Python lists (the reference)."""
    b, t = tokens.shape
    out = {
        k: np.zeros((b, n), np.int32)
        for k, n in (
            ("enc_tokens", t),
            ("enc_segment_ids", t),
            ("enc_positions", t),
            ("dec_inputs", dec_len),
            ("dec_targets", dec_len),
            ("dec_segment_ids", dec_len),
            ("dec_positions", dec_len),
        )
    }
    for i in range(b):
        enc, dec = [], []  # (token, segment) pairs
        for s in dict.fromkeys(seg[i].tolist()):  # segments in order of appearance
            idx = [j for j in range(t) if seg[i, j] == s]
            number, prev_noise = 0, False
            for j in idx:
                if noise[i, j] and not prev_noise:
                    enc.append((sentinels[number], s))
                    dec.append((sentinels[number], s))
                    number += 1
                if noise[i, j]:
                    dec.append((tokens[i, j], s))
                else:
                    enc.append((tokens[i, j], s))
                prev_noise = bool(noise[i, j])
        for name, seq in (("enc", enc), ("dec", dec)):
            pos, prev = 0, None
            for j, (tok, s) in enumerate(seq):
                pos = pos + 1 if s == prev else 0
                key = "dec_targets" if name == "dec" else "enc_tokens"
                out[key][i, j] = tok
                out[f"{name}_segment_ids"][i, j] = s
                out[f"{name}_positions"][i, j] = pos if s > 0 else 0
                if name == "dec":
                    out["dec_inputs"][i, j] = bos if s != prev else seq[j - 1][0]
                prev = s
        if len(dec) < dec_len:  # the padding after the targets is a segment too: bos first
            out["dec_inputs"][i, len(dec)] = bos
    return out


def held_out_before_after(name: str, arg: str, workdir: str, extra=()) -> tuple[dict, dict]:
    """Eval metrics of configs/<name>/tiny.py[:arg] (SHORT_RUN overrides) before and after."""
    from llmos_jax.data import build_data, eval_batches
    from llmos_jax.train import loop

    spec = str(ROOT / "configs" / name / "tiny.py") + (f":{arg}" if arg else "")
    config = load_config(spec, SHORT_RUN + list(extra))
    exp = loop.build_experiment(config)
    data = build_data(config, workdir)
    state, _ = init_train_state(
        exp.eval_model, exp.tx, exp.mesh, exp.rules, config.data.seq_len, config.seed
    )
    held_out = eval_batches(data.eval, config.train.global_batch_size, 0, 1, 4)
    before = loop.evaluate(exp, state.params, {}, held_out, tokenizer=data.tokenizer)
    final = loop.train(config, workdir, show_progress=False, data=data)
    # Shown with pytest -s: the numbers behind the assertions.
    print(f"\n{spec}: held-out loss {before['eval/loss']:.3f} -> {final['eval/loss']:.3f}")
    return before, final
