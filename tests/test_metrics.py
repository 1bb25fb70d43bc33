"""MetricsLogger: JSON lines on disk, resume, progress bar, and wandb only when asked for."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from llmos_jax import config as config_lib
from llmos_jax import metrics


@pytest.fixture
def config():
    return config_lib.base_config()


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # strict: no NaN tokens


def test_writes_valid_json_lines_and_round_trips(tmp_path, config):
    with metrics.MetricsLogger(tmp_path, config, total_steps=20, show_progress=False) as log:
        log.log(10, {"train/loss": np.float32(2.5), "perf/tokens_per_s": 1234, "perf/mfu": 0.1})
        log.log(10, {"eval/loss": 2.0, "eval/perplexity": math.exp(2.0)})
        log.log(20, {"train/loss": float("nan"), "train/grad_norm": float("inf")})
    raw = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in raw] == [10, 10, 20]
    assert raw[0] == {"step": 10, "train/loss": 2.5, "perf/tokens_per_s": 1234.0, "perf/mfu": 0.1}
    assert isinstance(raw[0]["perf/tokens_per_s"], float)
    assert raw[2]["train/loss"] == "nan" and raw[2]["train/grad_norm"] == "inf"
    back = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert back[:2] == raw[:2]
    assert back[1]["eval/perplexity"] == pytest.approx(math.exp(2.0))
    assert math.isnan(back[2]["train/loss"]) and back[2]["train/grad_norm"] == math.inf
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [10, 10, 20]  # workdir form


def test_resume_appends_and_drops_uncheckpointed_steps(tmp_path, config):
    with metrics.MetricsLogger(tmp_path, config, total_steps=40, show_progress=False) as log:
        for step in (10, 20, 30):
            log.log(step, {"train/loss": float(step)})
    # Checkpoint at 20: step 30 is redone, so its old line must not appear twice.
    with metrics.MetricsLogger(
        tmp_path, config, total_steps=40, start_step=20, show_progress=False
    ) as log:
        for step in (30, 40):
            log.log(step, {"train/loss": step + 0.5})
    got = [(r["step"], r["train/loss"]) for r in metrics.read_metrics(tmp_path)]
    assert got == [(10, 10.0), (20, 20.0), (30, 30.5), (40, 40.5)]
    # Resuming at the last logged step keeps everything and appends.
    with metrics.MetricsLogger(
        tmp_path, config, total_steps=50, start_step=40, show_progress=False
    ) as log:
        log.log(50, {"train/loss": 1.0})
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [10, 20, 30, 40, 50]


def test_torn_last_line_is_dropped(tmp_path, config):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 3.0}\n{"step": 2, "train/lo')
    assert metrics.read_metrics(path) == [{"step": 1, "train/loss": 3.0}]
    with metrics.MetricsLogger(
        tmp_path, config, total_steps=5, start_step=1, show_progress=False
    ) as log:
        log.log(2, {"train/loss": 2.0})
    assert _lines(path) == [{"step": 1, "train/loss": 3.0}, {"step": 2, "train/loss": 2.0}]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        metrics.read_metrics(path)


@pytest.mark.parametrize("env_mode,config_mode", [("disabled", "offline"), (None, "disabled")])
def test_disabled_wandb_is_never_imported(tmp_path, config, monkeypatch, env_mode, config_mode):
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    config.wandb.mode = config_mode
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` now raises ImportError
    with metrics.MetricsLogger(tmp_path, config, total_steps=3, show_progress=False) as log:
        log.log(1, {"train/loss": 1.0})
    assert log._wandb_run is None
    assert not (tmp_path / "wandb").exists()


def test_wandb_gets_name_config_and_steps(tmp_path, config, monkeypatch):
    calls: dict = {"log": [], "finished": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finished"] += 1

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    workdir = tmp_path / "my_run"
    with metrics.MetricsLogger(workdir, config, total_steps=3, show_progress=False) as log:
        log.log(2, {"train/loss": float("nan")})
    init_kwargs = calls["init"]
    assert init_kwargs["name"] == "my_run" and init_kwargs["mode"] == "offline"
    assert init_kwargs["dir"] == str(workdir) and init_kwargs["project"] == "llmos_jax"
    assert init_kwargs["config"] == config.to_dict()
    ((step, data),) = calls["log"]
    assert step == 2 and math.isnan(data["train/loss"]) and "step" not in data
    assert calls["finished"] == 1
    config.wandb.name = "named"
    metrics.MetricsLogger(workdir, config, total_steps=3, show_progress=False).close()
    assert calls["init"]["name"] == "named"


def test_non_main_process_writes_nothing(tmp_path, config, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setitem(sys.modules, "wandb", None)  # would raise if a non-main host tried
    workdir = tmp_path / "w"
    with metrics.MetricsLogger(workdir, config, total_steps=3, is_main_process=False) as log:
        log.log(1, {"train/loss": 1.0})
        log.message("hidden")
    assert not workdir.exists()


def test_progress_bar_postfix(tmp_path, config, capsys):
    log = metrics.MetricsLogger(tmp_path, config, total_steps=100, start_step=10)
    assert log._bar.n == 10
    log.log(20, {"train/loss": 2.34567, "perf/tokens_per_s": 12345.0, "perf/mfu": 0.123})
    log.log(20, {"eval/loss": 2.0})  # eval keeps the train postfix
    log.message("hello")
    assert log._bar.n == 20
    assert log._bar.postfix == "loss=2.3457, tok/s=12.3k, mfu=12.3%"
    log.close()
    log.close()  # idempotent
    out = capsys.readouterr().out
    assert "hello" in out and "MFU convention" in out
