"""Preemption: turn a SIGTERM (how TPU VMs, GKE and SLURM give notice) into "finish this step,
save, stop", at the same step on every host.

* Multi-host runs (`jax.distributed.initialize` done): JAX's preemption service already catches
  SIGTERM on each host and agrees on a step; `reached_preemption_sync_point(step)` turns true on
  every host at that same step. A Python handler here would replace JAX's, so none is installed.
* A single process without the service: a Python SIGTERM handler sets a flag, read after each
  step (a second SIGTERM gets the previous behaviour, usually death, for a user who insists).
* Several processes without the service (it was disabled): each host's flag is all-gathered
  every step, so one host's notice stops all of them at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _jax_preemption_service() -> bool:
    """True when jax.distributed was initialized with its preemption sync manager."""
    from jax._src import distributed  # No public accessor for this state (jax 0.10).

    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None


class PreemptionGuard:
    """Context manager; `reached(step)` is True at the step where every host should save and stop.

    Call `reached` after every step, on every host, with the number of completed steps (JAX's
    sync protocol needs every step, in order).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._signals = signals
        self._notice = threading.Event()
        self._previous: dict[int, object] = {}
        self._use_jax = _jax_preemption_service()
        self._multihost = jax.process_count() > 1

    def __enter__(self) -> PreemptionGuard:
        if self._use_jax:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM will not save a checkpoint first")
            return self
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        self._notice.set()
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def reached(self, step: int) -> bool:
        if self._use_jax:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        notice = self._notice.is_set()
        if self._multihost:
            flags = multihost_utils.process_allgather(np.asarray(notice, np.int32))
            return bool(np.any(flags))
        return notice

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
