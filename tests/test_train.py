"""End to end on the demo config, the optimizer, gradient accumulation and non-finite updates."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.cli import main
from llmos_jax.config import load_config
from llmos_jax.metrics import read_metrics
from llmos_jax.models import build_model
from llmos_jax.train import loop
from llmos_jax.train.optim import decay_mask, make_optimizer, make_schedule
from llmos_jax.train.state import TrainState
from llmos_jax.train.step import make_train_step
from tests.helpers import init_params, random_batch, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "clm" / "tiny.py")
# The demo config, shortened to fit the test budget (same model, data and optimizer).
SHORT = [
    "train.steps=60",
    "train.eval_every=60",
    "train.log_every=20",
    "train.eval_batches=4",
    "data.seq_len=128",
    "optim.warmup_steps=10",
    "wandb.mode=disabled",
]


# Session scope: xdist runs the two tests of the group on one worker, but not always one after
# the other, and a module-scoped fixture would be torn down and trained again in between.
@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = load_config(TINY, SHORT)
    exp = loop.build_experiment(config)
    from llmos_jax.data import build_data, eval_batches
    from llmos_jax.train.init import init_train_state

    data = build_data(config, workdir)
    state, _ = init_train_state(
        exp.eval_model, exp.tx, exp.mesh, exp.rules, config.data.seq_len, config.seed
    )
    held_out = eval_batches(data.eval, config.train.global_batch_size, 0, 1, 4)
    before = loop.evaluate(exp, state.params, {}, held_out)
    final = loop.train(config, workdir, show_progress=False, data=data)
    return workdir, before, final, data


# One worker runs both tests that use the module's trained run (make test: --dist loadgroup),
# so it is trained once rather than once per xdist worker.
@pytest.mark.slow
@pytest.mark.xdist_group("trained_run")
def test_training_reduces_held_out_loss(trained_run):
    workdir, before, final, data = trained_run
    # An untrained model predicts nearly uniformly: loss close to ln(V).
    assert before["eval/loss"] == pytest.approx(math.log(2048), abs=0.3)
    assert final["eval/loss"] < before["eval/loss"] - 1.5
    rows = read_metrics(pathlib.Path(workdir) / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/loss" in r] == [20, 40, 60]
    for key in ("train/loss", "train/grad_norm", "train/lr", "perf/tokens_per_s", "perf/mfu"):
        assert math.isfinite(rows[-1][key]), key
    assert rows[-1]["eval/perplexity"] == pytest.approx(math.exp(rows[-1]["eval/loss"]))
    assert (pathlib.Path(workdir) / "tokenizer.model").exists()
    assert (pathlib.Path(workdir) / "config.json").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("trained_run")
def test_cli_eval_and_generate_on_the_trained_run(trained_run, capsys):
    workdir, _, final, _ = trained_run
    assert main(["eval", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    ppl = float(out.split("perplexity ")[1].split()[0])
    # The CLI evaluates the whole held-out split; the loop evaluated its first 4 batches.
    assert ppl < math.exp(final["eval/loss"]) * 1.5
    baseline = float(out.split("unigram baseline ")[1].split()[0])
    assert ppl < baseline
    assert (
        main(
            [
                "generate",
                "--workdir",
                workdir,
                "--prompt",
                "The for statement",
                "--prompt",
                "x",
                "--max-new-tokens",
                "8",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    first, second = capsys.readouterr().out.split("\n---\n")
    assert first.startswith("The for statement") and len(first) > len("The for statement") + 5
    assert second.startswith("x")


def test_cli_config_error_names_field(capsys, tmp_path):
    code = main(
        ["train", "--config", TINY, "--config.model.n_kv_heads=3", "--workdir", str(tmp_path)]
    )
    assert code == 2
    assert "model.n_kv_heads" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()  # nothing was started


def test_schedule_warmup_then_cosine():
    c = tiny_config()
    c.train.steps, c.optim.lr, c.optim.warmup_steps, c.optim.end_lr_ratio = 110, 1.0, 10, 0.1
    s = make_schedule(c)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    # Half-way through the decay: cosine gives the mean of peak and end.
    assert float(s(60)) == pytest.approx(0.55, rel=1e-5)
    assert float(s(110)) == pytest.approx(0.1, rel=1e-5)
    c.optim.decay = "linear"
    assert float(make_schedule(c)(60)) == pytest.approx(0.55, rel=1e-5)


def test_no_weight_decay_on_norms_and_biases():
    model = build_model(tiny_config("gpt2"))
    mask = decay_mask(init_params(model))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['layers']['attn_norm']['scale']"] is False
    assert flat["['layers']['attn']['query']['bias']"] is False
    assert flat["['layers']['attn']['query']['kernel']"] is True
    assert flat["['embed']['embedding']"] is True


def _state(c, model, tx):
    params = init_params(model)
    return TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(0),
        frozen={},
    )


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_grad_accumulation_equals_one_big_batch():
    c = tiny_config("llama")
    model = build_model(c)
    tx, sched = make_optimizer(c)
    batch = {
        k: jnp.asarray(v) for k, v in random_batch(np.random.default_rng(0), 8, 32, 128, 3).items()
    }
    batch["loss_mask"] = batch["loss_mask"].at[:3, 20:].set(0)  # unequal token counts per micro
    loss_fn = objectives.get("clm")(c, model)
    s1, m1 = jax.jit(make_train_step(loss_fn, tx, sched, 1))(_state(c, model, tx), batch)
    s4, m4 = jax.jit(make_train_step(loss_fn, tx, sched, 4))(_state(c, model, tx), batch)
    assert float(m4["train/loss"]) == pytest.approx(float(m1["train/loss"]), rel=1e-5)
    assert float(m4["train/num_tokens"]) == float(m1["train/num_tokens"])
    assert float(m4["train/grad_norm"]) == pytest.approx(float(m1["train/grad_norm"]), rel=1e-4)


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_nonfinite_update_is_skipped_and_counted():
    c = tiny_config("llama")
    model = build_model(c)
    tx, sched = make_optimizer(c)
    clm = objectives.get("clm")(c, model)

    def poisoned(params, batch, rng, frozen):  # NaN loss (and grads) when the batch says so
        loss, metrics = clm(params, batch, rng, frozen)
        return loss * jnp.where(batch["poison"][0, 0] > 0, jnp.nan, 1.0), metrics

    step = jax.jit(make_train_step(poisoned, tx, sched))
    batch = {
        k: jnp.asarray(v) for k, v in random_batch(np.random.default_rng(0), 8, 32, 128).items()
    }
    state = _state(c, model, tx)
    state, _ = step(state, {**batch, "poison": jnp.zeros((8, 32), jnp.int32)})
    before = jax.tree.map(np.asarray, state.params)
    for i in range(2):
        state, m = step(state, {**batch, "poison": jnp.ones((8, 32), jnp.int32)})
        assert int(m["train/nonfinite_streak"]) == i + 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))  # skipped: params untouched
    state, m = step(state, {**batch, "poison": jnp.zeros((8, 32), jnp.int32)})
    assert int(m["train/nonfinite_streak"]) == 0 and int(state.step) == 4


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_loop_stops_after_too_many_nonfinite_updates(tmp_path, monkeypatch):
    c = tiny_config("llama")
    c.data.seq_len, c.model.vocab_size = 32, 1024
    c.train.steps, c.train.log_every, c.train.max_consecutive_nonfinite = 6, 1, 2
    c.train.eval_every = c.train.checkpoint_every = 100
    real = objectives.get("clm")

    def nan_factory(config, model):
        fn = real(config, model)
        return lambda p, b, r, f: (lambda lm: (lm[0] * jnp.nan, lm[1]))(fn(p, b, r, f))

    monkeypatch.setattr(objectives, "get", lambda name: nan_factory)
    with pytest.raises(loop.NonFiniteError, match=r"train\.max_consecutive_nonfinite=2"):
        loop.train(c, str(tmp_path), show_progress=False)
