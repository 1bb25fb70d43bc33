"""`llmos train` in a subprocess for the resume, preemption and gs:// tests.

Everything a worker sees is explicit (device count, CPU backend, no wandb), compiled programs
go to a persistent cache shared by the launches of one test module (so only the first launch
per device count compiles), and every wait is bounded: a worker that outlives it gets SIGKILL
(after jax.distributed.initialize a process ignores SIGTERM).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def shared_dir(tmp_path_factory, name: str):
    """A directory that every xdist worker of this session shares, held under an exclusive lock
    (so a reference run is built once and reused; the builder's own timeouts bound the wait)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common base
    path = root / name
    path.mkdir(exist_ok=True)
    with open(path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def subprocess_env(devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",  # a killed worker's last messages are already in its log
        PYTHONPATH=str(ROOT),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.update(extra)
    return env


def launch_train(
    runs,
    workdir,
    log: pathlib.Path,
    *,
    devices: int = 8,
    extra: list[str] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Starts `llmos train --config runs.config --workdir WORKDIR` (or `args` instead of
    --config), output to `log`."""
    command = [sys.executable, "-m", "llmos_jax.cli", "train", "--workdir", str(workdir)]
    command += args if args is not None else ["--config", runs.config]
    command += ["--no-progress", *(extra or [])]
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=subprocess_env(devices, runs.cache, **(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
    """The exit code; a worker still running after `timeout_s` is killed and reported."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        raise AssertionError(f"worker still running after {timeout_s}s: killed") from None


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen, timeout_s: float, log: pathlib.Path
) -> None:
    """Polls `condition` until it holds; fails if the worker exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ValueError):  # a file mid-rewrite: look again
            pass
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    raise AssertionError(f"condition not met in {timeout_s}s:\n{log.read_text()[-3000:]}")
