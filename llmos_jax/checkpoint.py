"""Orbax checkpoints of the whole train state plus the data position.

A checkpoint at step s holds the state *after* s optimizer steps and `{"step": s}` for the data
pipeline: since batch s is a pure function of (seed, s), that is the whole iterator state.
Orbax writes each step into a temporary directory and renames it when complete, so an interrupted
save is never picked up by `latest_step`.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_DIR


class Checkpointer:
    """A thin owner of an `ocp.CheckpointManager` with the items this project saves."""

    def __init__(
        self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False
    ):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
        )
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, force: bool = True) -> bool:
        """Starts an (asynchronous) save of `state` and `data_state` at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state, step: int | None = None):
        """(state, data_state) at `step` (default: latest), placed by abstract_state's shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def has_checkpoint(workdir: str) -> bool:
    d = checkpoint_dir(workdir)
    if not d.exists():
        return False
    return any(p.name.isdigit() for p in d.iterdir())


def restore_params(workdir: str, abstract_state):
    """Only the params of the latest checkpoint (for eval / generate / serve)."""
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        state, data = ckpt.restore(abstract_state)
    finally:
        ckpt.close()
    return state.params, int(data.get("step", 0))


def _quiet_orbax() -> None:
    """Orbax logs every save at INFO through absl; keep the progress bar readable."""
    if os.environ.get("LLMOS_VERBOSE_ORBAX"):
        return
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    jax.config.update("jax_log_compiles", False)


_quiet_orbax()
