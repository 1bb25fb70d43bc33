"""Preemption on two hosts: two processes joined by jax.distributed on 127.0.0.1 (one CPU device
each, gloo collectives) train one run; SIGTERM reaches only process 1, yet both stop at the same
step, save one complete checkpoint together and exit 0 (JAX's preemption sync point)."""

import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from llmos_jax import checkpoint
from llmos_jax.metrics import read_metrics
from tests.train_subprocess import ROOT, finish, subprocess_env, wait_for

pytestmark = pytest.mark.slow

WORKER = """
import sys

import jax

pid, port, workdir, config = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
address = f"127.0.0.1:{port}"
jax.distributed.initialize(
    address, 2, pid, coordinator_bind_address=address, initialization_timeout=120,
    heartbeat_timeout_seconds=60, shutdown_timeout_seconds=60,
)
from llmos_jax.cli import main

sys.exit(main(["train", "--config", config, "--workdir", workdir, "--no-progress"]))
"""
CONFIG = """
from tests.helpers import tiny_config


def get_config():
    c = tiny_config()
    c.train.steps = 200  # far more than run before the notice
    c.train.log_every = 1
    c.train.eval_every = 1000
    c.train.eval_batches = 1
    c.train.checkpoint_every = 1000  # only the preemption saves
    return c
"""


def test_sigterm_to_one_host_stops_both_at_the_same_step(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "config.py").write_text(CONFIG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    ns = types.SimpleNamespace(cache=tmp_path / "jax_cache")
    procs, logs = [], []
    for pid in (0, 1):
        logs.append(tmp_path / f"host{pid}.log")
        with open(logs[-1], "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(tmp_path / "worker.py"), str(pid), str(port)]
                    + [str(workdir), str(tmp_path / "config.py")],
                    cwd=ROOT,
                    env=subprocess_env(1, ns.cache),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        wait_for(lambda: len(read_metrics(workdir)) >= 2, procs[0], 300, logs[0])
        procs[1].send_signal(signal.SIGTERM)
        noticed = time.monotonic()
        codes = [finish(p, 180) for p in procs]
    finally:
        for p in procs:  # jax.distributed workers ignore SIGTERM: SIGKILL whatever is left
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(30)
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    found = re.search(r"Preempted: saved and committed step (\d+)", logs[0].read_text())
    assert found, logs[0].read_text()[-2000:]
    step = int(found.group(1))
    assert checkpoint.complete_steps(str(workdir)) == [step]  # one checkpoint, from both hosts
    assert checkpoint.check_step(str(workdir), step, deep=True) == []
    assert read_metrics(workdir)[-1]["step"] == step
    manifest = checkpoint.read_manifest(str(workdir), step)
    assert manifest["provenance"]["environment"]["process_count"] == 2
    print(f"stopped at step {step}, {time.monotonic() - noticed:.1f}s after the notice")
