"""Exact resume, end to end through `llmos train` in subprocesses: SIGKILL at random moments,
SIGTERM, a re-run from a run directory alone, and a restore onto another mesh and device count.

One uninterrupted reference run (8 devices, mesh data=2 fsdp=2 tensor=2) is the yardstick: on
the same mesh every per-step metric after a resume must equal it bit for bit; on another mesh
to float tolerance. Subprocesses share a persistent compilation cache, so only the first
launch per device count compiles; every wait is bounded and stuck workers get SIGKILL.
"""

import json
import random
import re
import shutil
import signal
import time
import types

import numpy as np
import pytest

from llmos_jax import checkpoint
from llmos_jax.metrics import read_metrics
from tests.train_subprocess import finish, launch_train, shared_dir, wait_for

pytestmark = pytest.mark.slow

STEPS = 24
CONFIG = f"""
from tests.helpers import tiny_config


def get_config():
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.train.steps = {STEPS}
    c.train.log_every = 1
    c.train.eval_every = {STEPS}
    c.train.eval_batches = 1
    c.train.checkpoint_every = 4
    c.train.keep_every = 12  # keeps step 12 for the mesh-change restore
    return c
"""
RESTORE_STEP = 12


def _rows(workdir) -> list[dict]:
    """metrics.jsonl without the timing keys (those legitimately differ between runs)."""
    return [
        {k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(workdir)
    ]


def _newest(workdir) -> int:
    steps = checkpoint.complete_steps(str(workdir))
    return steps[-1] if steps else 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted reference run, built once per session (shared by xdist workers)."""
    with shared_dir(tmp_path_factory, "llmos_resume") as base:
        cfg = base / "config_222.py"
        cfg.write_text(CONFIG)
        ns = types.SimpleNamespace(base=base, config=str(cfg), cache=base / "jax_cache")
        ns.reference = base / "reference"
        done = base / "reference.done"
        if not done.exists():
            shutil.rmtree(ns.reference, ignore_errors=True)
            proc = launch_train(ns, ns.reference, base / "reference.log")
            assert finish(proc, 400) == 0, (base / "reference.log").read_text()[-3000:]
            done.touch()
    ns.rows = _rows(ns.reference)
    assert [r["step"] for r in ns.rows] == list(range(1, STEPS + 1))
    return ns


def test_sigkill_at_random_moments_then_resume_bit_for_bit(runs, tmp_path):
    """Killed mid-step or mid-save three times: the newest complete checkpoint is always intact,
    each launch resumes from it, and the finished run's metrics equal the uninterrupted run's."""
    rng = random.Random(1234)
    workdir = tmp_path / "run"
    every_step = ["--config.train.checkpoint_every=1"]  # a save is in flight most of the time
    start, mid_save = 0, 0
    for attempt in range(3):
        log = tmp_path / f"launch{attempt}.log"
        proc = launch_train(runs, workdir, log, extra=every_step)
        # Once this launch has committed a checkpoint of its own, kill it at a random moment.
        wait_for(lambda s=start: _newest(workdir) > s, proc, 240, log)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        mid_save += any(".orbax-checkpoint-tmp" in p for p in checkpoint.incomplete_saves(workdir))
        if attempt:
            assert f"Resuming from checkpoint {workdir}/checkpoints/{start} (step {start})" in (
                log.read_text()
            )
        start = _newest(workdir)
        assert checkpoint.check_step(str(workdir), start, deep=True) == []
    log = tmp_path / "final.log"
    assert finish(launch_train(runs, workdir, log, extra=every_step), 300) == 0, log.read_text()
    assert f"(step {start})" in log.read_text()
    assert _rows(workdir) == runs.rows
    print(f"{mid_save} of 3 kills landed during an asynchronous save")


def test_sigterm_saves_commits_and_exits_zero(runs, tmp_path):
    workdir = tmp_path / "run"
    log = tmp_path / "preempted.log"
    proc = launch_train(runs, workdir, log)
    wait_for(lambda: (workdir / "metrics.jsonl").exists(), proc, 240, log)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, 120) == 0, log.read_text()[-3000:]
    out = log.read_text()
    found = re.search(r"Preempted: saved and committed step (\d+) to (\S+)\. ", out)
    assert found, out[-3000:]
    step = int(found.group(1))
    assert 1 <= step < STEPS and found.group(2) == f"{workdir}/checkpoints/{step}"
    assert f"llmos train --resume-from {workdir}" in out
    assert _newest(workdir) == step  # the preemption checkpoint is the one a restore takes
    assert checkpoint.check_step(str(workdir), step, deep=True) == []
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, step + 1))

    log = tmp_path / "resumed.log"  # with the command the message suggests
    proc = launch_train(runs, workdir, log, args=["--resume-from", str(workdir)])
    assert finish(proc, 300) == 0, log.read_text()[-3000:]
    assert f"(step {step})" in log.read_text()
    assert _rows(workdir) == runs.rows


def test_rerun_from_a_run_directory_alone_reproduces_it(runs, tmp_path):
    """`--resume-from RUN --workdir NEW`: a fresh run from RUN's config.json and tokenizer gives
    identical metrics (two fresh runs of one config and seed agree bit for bit), and warns about
    what differs from the manifest."""
    source = tmp_path / "source"
    shutil.copytree(runs.reference, source)
    manifest_path = source / "checkpoints" / str(STEPS) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["provenance"]["packages"]["optax"] = "0.0.1"  # as if recorded with another optax
    manifest_path.write_text(json.dumps(manifest))
    workdir = tmp_path / "again"
    log = tmp_path / "again.log"
    proc = launch_train(runs, workdir, log, args=["--resume-from", str(source)])
    assert finish(proc, 300) == 0, log.read_text()[-3000:]
    assert "package optax: 0.0.1 ->" in log.read_text()
    assert _rows(workdir) == runs.rows
    for name in ("tokenizer.model", "config.json"):
        assert (workdir / name).read_bytes() == (runs.reference / name).read_bytes()
    new = checkpoint.read_manifest(str(workdir), STEPS)["provenance"]
    old = checkpoint.read_manifest(str(runs.reference), STEPS)["provenance"]
    assert new["data"]["fingerprint"] == old["data"]["fingerprint"]
    assert new["tokenizer"] == old["tokenizer"] and new["config"] == old["config"]


@pytest.mark.parametrize("devices", [4, 1])
def test_restore_onto_another_mesh_and_device_count(runs, tmp_path, devices):
    """The (2,2,2) checkpoint of step 12 restored onto (4,1,1) on 4 devices, or 1 device: the
    same examples in the same order, so the losses agree to float tolerance."""
    workdir = tmp_path / "run"
    shutil.copytree(runs.reference, workdir)
    for step in checkpoint.complete_steps(str(workdir)):
        if step > RESTORE_STEP:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    mesh = ["--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
    log = tmp_path / "moved.log"
    proc = launch_train(runs, workdir, log, devices=devices, extra=mesh)
    assert finish(proc, 400) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"(step {RESTORE_STEP})" in out and f"device count: 8 -> {devices}" in out
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[:RESTORE_STEP] == runs.rows[:RESTORE_STEP]
    for key in ("train/loss", "train/grad_norm", "train/param_norm"):
        got = np.array([r[key] for r in rows[RESTORE_STEP:]])
        want = np.array([r[key] for r in runs.rows[RESTORE_STEP:]])
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(rows[-1]["eval/loss"], runs.rows[-1]["eval/loss"], rtol=1e-5)
