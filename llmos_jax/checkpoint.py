"""Orbax checkpoints of the whole train state plus the data position, each with a manifest.

A checkpoint at step s lives in `WORKDIR/checkpoints/s/` and holds
  state/          the TrainState after s optimizer steps (params, optimizer state, step, RNG key,
                  frozen trees), as sharded arrays (Orbax + tensorstore, OCDBT; no pickle)
  data/           JSON: the data position (batch s is a pure function of (seed, s), so the step,
                  seed and batch size are the whole iterator state)
  manifest.json   provenance (git, packages, devices, mesh, data fingerprint, tokenizer) and the
                  size and sha256 of every other file, so corruption is detectable
Crash safety comes from Orbax: a save is written to `s.orbax-checkpoint-tmp` and renamed to `s`
only when complete (on gs://, where there is no rename, `commit_success.txt` marks completion),
so a process killed mid-save leaves nothing that `complete_steps` lists. The manifest is written
by a hook that Orbax runs after every host has finished writing and *before* that commit, so a
committed checkpoint always has its manifest. Restore takes the newest complete checkpoint whose
files match their manifest's sizes (a cheap check); `verify` also compares checksums.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from llmos_jax.config import ConfigError

CHECKPOINT_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "llmos_jax checkpoint manifest v1"
# Top-level files Orbax writes or rewrites after the manifest is sealed: never checksummed.
_UNSEALED = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST_FILE})
_UNUSABLE_SUFFIX = ".unusable"  # Not a step name Orbax recognises, so it is never restored.
SAVE_TIMEOUT_S = 900  # Orbax's barriers and commit wait: a dead host cannot hang a save forever.
_HASH_CHUNK = 8 << 20
_HASH_THREADS = 8

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    # Orbax (OCDBT) needs absolute local paths; gs:// URLs pass through.
    local = "://" not in str(workdir)
    return epath.Path(os.path.abspath(workdir) if local else workdir) / CHECKPOINT_DIR


def complete_steps(workdir: str | os.PathLike) -> list[int]:
    """Steps whose save was committed, oldest first (interrupted saves are not listed)."""
    return sorted(ocp.path.step.checkpoint_steps(checkpoint_dir(workdir)))


def has_checkpoint(workdir: str | os.PathLike) -> bool:
    return bool(complete_steps(workdir))


def incomplete_saves(workdir: str | os.PathLike) -> list[str]:
    """Names of step directories left by a save that never committed (or was set aside)."""
    d = checkpoint_dir(workdir)
    if not d.exists():
        return []
    done = {str(s) for s in complete_steps(workdir)}
    return sorted(p.name for p in d.iterdir() if p.is_dir() and p.name not in done)


def step_path(workdir: str | os.PathLike, step: int) -> epath.Path:
    return checkpoint_dir(workdir) / str(step)


def read_manifest(workdir: str | os.PathLike, step: int) -> dict[str, Any] | None:
    path = step_path(workdir, step) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _files(root: epath.Path, prefix: str = "", sealed_only: bool = True):
    """(relative name, path) of every file under root (only those the manifest covers when
    `sealed_only`), in a stable order."""
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        rel = f"{prefix}{p.name}"
        if p.is_dir():
            yield from _files(p, rel + "/", sealed_only)
        elif prefix or not sealed_only or p.name not in _UNSEALED:
            yield rel, p


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(root: epath.Path) -> dict[str, dict[str, Any]]:
    """{relative name: {"size", "sha256"}} of every file of a checkpoint directory.

    Files are hashed on several threads (hashlib releases the GIL): this reads the whole
    checkpoint back, in the background, at roughly 0.5-1 GB/s per thread.
    """
    files = list(_files(root))

    def entry(path: epath.Path) -> dict[str, Any]:
        return {"size": int(path.stat().length), "sha256": _sha256(path)}

    with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
        entries = list(pool.map(entry, [p for _, p in files]))
    return {rel: e for (rel, _), e in zip(files, entries, strict=True)}


def check_step(workdir: str | os.PathLike, step: int, deep: bool = True) -> list[str]:
    """Problems with checkpoint `step` (empty when it is intact).

    Compares every file with the manifest: missing, unexpected or resized files always, content
    (sha256) only when `deep` (which reads the whole checkpoint).
    """
    root = step_path(workdir, step)
    manifest = read_manifest(workdir, step)
    if manifest is None or "files" not in manifest:
        return [f"{MANIFEST_FILE} missing or unreadable: the checkpoint cannot be verified"]
    expected = manifest["files"]
    present = dict(_files(root))
    problems = [f"missing file {rel}" for rel in sorted(set(expected) - set(present))]
    problems += [f"unexpected file {rel}" for rel in sorted(set(present) - set(expected))]
    for rel in sorted(set(expected) & set(present)):
        size = int(present[rel].stat().length)
        if size != expected[rel]["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {expected[rel]['size']}")
        elif deep and _sha256(present[rel]) != expected[rel]["sha256"]:
            problems.append(f"{rel}: contents differ from the manifest's sha256 (corrupted)")
    return problems


def step_size(workdir: str | os.PathLike, step: int) -> int:
    """Bytes on disk of checkpoint `step`."""
    files = _files(step_path(workdir, step), sealed_only=False)
    return sum(int(p.stat().length) for _, p in files)


class CheckpointMismatch(ConfigError):
    """A checkpoint's tree differs from the state the config builds: a config error, which the
    CLI prints like any other."""


@dataclasses.dataclass
class Restored:
    step: int
    state: Any
    data: dict[str, Any]  # the data position saved with it
    manifest: dict[str, Any] | None


class Checkpointer:
    """Owns an `ocp.CheckpointManager` holding `state` (a pytree) and `data` (JSON) per step.

    Args:
      workdir: The run directory (local or gs://); checkpoints go to `workdir/checkpoints`.
      keep: The newest this many checkpoints are kept...
      keep_every: ...plus every step divisible by this one, forever (0 = none).
      async_save: If False, `save` returns only once the checkpoint is committed.
      read_only: For inspection and restore only.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
        keep_every: int = 0,
    ):
        self.workdir = str(workdir)
        self.directory = checkpoint_dir(workdir)
        self._async = async_save
        self._pending: dict[str, Any] | None = None
        self._provenance: dict[str, Any] | None = None
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                create=False,
                enable_async_checkpointing=False,
                save_interval_steps=0,
            )
        else:
            keepers = [ocp.checkpoint_managers.LatestN(int(keep))]
            if keep_every:
                keepers.append(ocp.checkpoint_managers.EveryNSteps(int(keep_every)))
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(keepers),
                # A save killed midway leaves `s.orbax-checkpoint-tmp`: remove it on the next start.
                cleanup_tmp_directories=True,
                # Always asynchronous underneath: only AsyncCheckpointer runs the sealing hook.
                enable_async_checkpointing=True,
                async_options=ocp.AsyncOptions(
                    timeout_secs=SAVE_TIMEOUT_S, post_finalization_callback=self._seal
                ),
            )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, provenance: dict | None = None) -> float:
        """Starts saving `state` and `data_state` as checkpoint `step`; returns the seconds the
        caller was blocked (waiting for the previous save, and copying arrays off the devices)."""
        start = time.perf_counter()
        # The sealing hook reads self._pending, so at most one save may be in flight.
        self.manager.wait_until_finished()
        if provenance is None:
            if self._provenance is None:
                from llmos_jax import provenance as prov

                self._provenance = prov.collect()
            provenance = self._provenance
        self._pending = {"step": int(step), "data": dict(data_state), "provenance": provenance}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state))
        )
        self.manager.save(step, args=args, force=True)
        if not self._async:
            self.manager.wait_until_finished()
        return time.perf_counter() - start

    def _seal(self) -> None:
        """Writes manifest.json into the finished, not yet committed step directory.

        Orbax calls this on the primary host once every host has written its arrays, from its
        background thread, before the rename (or commit file) that makes the step visible.
        """
        pending = self._pending
        assert pending is not None, "Orbax committed a save that Checkpointer did not start"
        step = pending["step"]
        tmp = self.directory / f"{step}{ocp.path.step.TMP_DIR_SUFFIX}"
        root = tmp if tmp.exists() else self.directory / str(step)  # gs:// writes in place
        manifest = {
            "format": MANIFEST_FORMAT,
            **pending,
            "saved_unix": time.time(),
            "files": file_checksums(root),
        }
        (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))

    def restore(self, abstract_state, step: int | None = None):
        """(state, data_state) at `step` (default: latest), placed by abstract_state's shardings.

        Each host reads only the shards its devices hold: the arrays go straight to their
        devices, so the mesh and device count may differ from the run that saved them.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        )
        restored = self._restore(step, args)
        return restored["state"], dict(restored["data"])

    def restore_params(self, abstract_params, step: int | None = None):
        """(params, step): only the `params` subtree of the state at `step` (default: latest).

        For eval, generation and serving: the optimizer moments (twice the params under AdamW)
        and frozen trees are never read, so neither their time nor their memory is paid.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        # A partial restore fills a leaf the checkpoint lacks with garbage instead of failing,
        # so the saved params' paths and shapes are compared first (from the metadata alone).
        reader = ocp.PyTreeCheckpointHandler()
        try:
            saved = reader.metadata(self.directory / str(step) / "state")["params"]
        finally:
            reader.close()
        want = _shapes(abstract_params)
        have = _shapes(saved)
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:3]
            raise CheckpointMismatch(
                f"the checkpoint at {self.directory}/{step} holds other params than this config "
                f"builds (e.g. another model.scan_layers or size). Train into a fresh --workdir. "
                f"First differences (path, shape): {diff}"
            )
        item = {"params": abstract_params}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        )
        return self._restore(step, args)["state"]["params"], step

    def _restore(self, step: int, args):
        try:
            return self.manager.restore(step, args=args)
        except ValueError as e:
            message = str(e)
            if "tree structures do not match" not in message:
                raise
            # Orbax lists every differing subtree; the first few lines say which.
            detail = "\n".join(line[:160] for line in message.splitlines()[1:4])
            raise CheckpointMismatch(
                f"the checkpoint at {self.directory}/{step} holds a different model or "
                f"optimizer state than this config builds (e.g. another model.scan_layers, "
                f"size or optimizer). Train into a fresh --workdir, or delete this one "
                f"(`make clean` removes runs/demo). Orbax says:\n{detail}"
            ) from e

    def restore_latest(self, abstract_state) -> Restored | None:
        """The newest complete checkpoint whose files match their manifest, or None.

        A checkpoint that fails the check (truncated or missing files) is renamed to
        `s.unusable` (kept for inspection) and the previous one is tried.
        """
        for step in reversed(self.all_steps()):
            problems = check_step(self.workdir, step, deep=False)
            manifest = read_manifest(self.workdir, step)
            if manifest is None:
                log.warning("checkpoint %s has no manifest; restoring it unverified", step)
            elif problems:
                log.warning("checkpoint %s is damaged (%s); trying an older one", step, problems)
                self._set_aside(step)
                continue
            state, data = self.restore(abstract_state, step)
            return Restored(step, state, data, manifest)
        return None

    def _set_aside(self, step: int) -> None:
        src = self.directory / str(step)
        if jax.process_index() == 0:
            src.rename(self.directory / f"{step}{_UNUSABLE_SUFFIX}-{int(time.time())}")
        ocp.multihost.sync_global_processes(
            f"llmos_set_aside_{step}", timeout=ocp.multihost.coordination_timeout()
        )
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"/"-joined key path: shape} of a tree of arrays, abstract arrays or Orbax metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape) for path, x in flat}


def restore_params(workdir: str, abstract_params):
    """(params, step) of the latest checkpoint, nothing else read (for eval / generate / serve)."""
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        return ckpt.restore_params(abstract_params)
    finally:
        ckpt.close()


def _quiet_orbax() -> None:
    """Orbax logs every save at INFO through absl; keep the progress bar readable."""
    if os.environ.get("LLMOS_VERBOSE_ORBAX"):
        return
    absl = logging.getLogger("absl")
    absl.setLevel(logging.WARNING)
    # A read-only manager (eval, generate, serve) warns that it is read-only on every open.
    absl.addFilter(lambda record: "is read only" not in str(record.msg))
    jax.config.update("jax_log_compiles", False)


_quiet_orbax()
