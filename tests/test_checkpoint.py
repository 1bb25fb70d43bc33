"""Checkpointer in-process: round trip of the whole state, retention, manifests and checksums,
damaged and interrupted saves, no pickle, provenance records and the SIGTERM guard.

A small hand-built TrainState on the 8 virtual devices keeps these fast (no model to compile).
"""

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmos_jax import checkpoint, provenance
from llmos_jax.cli import main
from llmos_jax.train.preemption import PreemptionGuard
from llmos_jax.train.state import TrainState
from tests.helpers import tiny_config


def _state(seed: int = 0) -> TrainState:
    """A TrainState with sharded params, optimizer moments, an RNG key and a frozen teacher."""
    mesh = Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    rows = NamedSharding(mesh, PartitionSpec("data", "tensor"))
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = np.random.default_rng(seed)

    def put(shape, sharding):
        return jax.device_put(rng.standard_normal(shape).astype(np.float32), sharding)

    params = {"w": put((8, 4), rows), "b": put((4,), replicated)}
    return TrainState(
        step=jax.device_put(jnp.int32(seed + 3), replicated),
        params=params,
        opt_state=({"mu": put((8, 4), rows)}, {"nu": put((8, 4), rows)}),
        rng=jax.device_put(jax.random.PRNGKey(seed), replicated),
        frozen={"teacher": {"w": put((8, 4), rows)}},
    )


def _abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.sharding == y.sharding
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save(workdir, steps, **kwargs):
    ckpt = checkpoint.Checkpointer(str(workdir), **kwargs)
    try:
        for s in steps:
            ckpt.save(s, _state(s), {"step": s, "examples_seen": 8 * s})
    finally:
        ckpt.close()


def test_whole_state_round_trip_with_frozen_trees(tmp_path):
    state = _state(1)
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    blocked = ckpt.save(7, state, {"step": 7, "examples_seen": 56})
    ckpt.close()
    assert blocked >= 0.0
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    restored = ckpt.restore_latest(_abstract(state))
    ckpt.close()
    assert restored.step == 7 and restored.data == {"step": 7, "examples_seen": 56}
    _assert_same(restored.state, state)  # params, moments, step, rng key and frozen teacher


def test_restoring_another_models_tree_is_a_clear_error(tmp_path):
    """E.g. `make demo` after model.scan_layers changed: the error says what to do, and the
    checkpoint is left as it was."""
    _save(tmp_path, [5])
    other = _state(5)
    other.params["w_renamed"] = other.params.pop("w")
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    try:
        with pytest.raises(checkpoint.CheckpointMismatch, match=r"fresh --workdir"):
            ckpt.restore_latest(_abstract(other))
        assert ckpt.restore_latest(_abstract(_state(5))).step == 5
    finally:
        ckpt.close()


def test_manifest_checksums_every_file(tmp_path):
    _save(tmp_path, [5])
    root = tmp_path / "checkpoints" / "5"
    manifest = json.loads((root / "manifest.json").read_text())
    # Top-level files that Orbax (re)writes after the manifest is sealed are not covered.
    unsealed = {"manifest.json", "_CHECKPOINT_METADATA", "commit_success.txt"}
    written = {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and not (p.parent == root and p.name in unsealed)
    }
    assert set(manifest["files"]) == set(written)
    assert any(name.startswith("state/") for name in written)
    for name, path in written.items():  # an independent hash of each file
        entry = manifest["files"][name]
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["step"] == 5 and manifest["data"]["examples_seen"] == 40
    assert manifest["provenance"]["packages"]["jax"] == jax.__version__


def test_keeps_the_last_k_plus_every_mth(tmp_path):
    _save(tmp_path, range(1, 10), keep=2, keep_every=4)
    assert checkpoint.complete_steps(str(tmp_path)) == [4, 8, 9]


def test_interrupted_save_is_never_restored(tmp_path):
    _save(tmp_path, [1, 2])
    ckpt_dir = tmp_path / "checkpoints"
    # What a SIGKILL mid-save leaves: a temporary directory, some files short.
    partial = ckpt_dir / "3.orbax-checkpoint-tmp"
    shutil.copytree(ckpt_dir / "2", partial)
    for p in (partial / "state").rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    assert checkpoint.complete_steps(str(tmp_path)) == [1, 2]
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    restored = ckpt.restore_latest(_abstract(_state()))
    ckpt.save(3, restored.state, {"step": 3})  # the leftover does not block the next save
    ckpt.close()
    assert restored.step == 2
    _assert_same(restored.state, _state(2))
    assert checkpoint.complete_steps(str(tmp_path)) == [1, 2, 3]
    assert checkpoint.check_step(str(tmp_path), 3) == []


def _array_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in (root / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def test_verify_detects_a_corrupted_file(tmp_path, capsys):
    _save(tmp_path, [1, 2])
    assert main(["ckpt", "verify", str(tmp_path)]) == 0
    victim = max(_array_files(tmp_path / "checkpoints" / "2"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a checksum can tell
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["ckpt", "verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "step 1: ok" in out and "step 2: DAMAGED" in out
    assert str(victim.relative_to(tmp_path / "checkpoints" / "2")) in out


def test_restore_sets_a_truncated_checkpoint_aside(tmp_path, capsys):
    _save(tmp_path, [1, 2])
    victim = _array_files(tmp_path / "checkpoints" / "2")[0]
    victim.write_bytes(victim.read_bytes()[:-1])
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    restored = ckpt.restore_latest(_abstract(_state()))
    ckpt.save(2, restored.state, {"step": 2})  # step 2 can be written again
    ckpt.close()
    assert restored.step == 1
    _assert_same(restored.state, _state(1))
    aside = [p.name for p in (tmp_path / "checkpoints").iterdir() if ".unusable" in p.name]
    assert len(aside) == 1 and aside[0].startswith("2.unusable")
    assert main(["ckpt", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "incomplete" in out and aside[0] in out


def test_info_lists_steps_sizes_and_manifest(tmp_path, capsys):
    _save(tmp_path, [3, 6])
    assert main(["ckpt", "info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for step in (3, 6):
        root = tmp_path / "checkpoints" / str(step)
        on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        assert info["steps"][str(step)] == on_disk
    assert info["manifest"]["step"] == 6
    assert main(["ckpt", "info", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "step        3" in text and "git:" in text and "packages:" in text


def test_saving_and_loading_never_pickle(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    _save(tmp_path, [1])
    ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    state, data = ckpt.restore(_abstract(_state()))
    ckpt.close()
    _assert_same(state, _state(1))
    assert data["step"] == 1


def test_provenance_record(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ["XLA_FLAGS"])
    c = tiny_config()
    record = provenance.collect(c)
    repo = pathlib.Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert record["git"]["commit"] == (head or None)
    assert record["packages"]["jax"] == jax.__version__
    env = record["environment"]
    assert env["backend"] == "cpu" and env["device_count"] == 8
    assert env["xla_env"]["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
    assert record["config"]["model"]["d_model"] == 64

    changed = json.loads(json.dumps(record))
    changed["packages"]["jax"] = "0.0.1"
    changed["config"]["train"]["steps"] = 99
    diffs = provenance.differences(changed, record)
    assert f"package jax: 0.0.1 -> {jax.__version__}" in diffs
    assert "config train.steps: 99 -> 10" in diffs
    assert provenance.differences(record, record) == []


def test_sigterm_becomes_a_stop_at_the_next_step():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.reached(2)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_restore_params_reads_only_the_params(tmp_path):
    """What eval / generate / serve load: the params, placed by the abstract tree's shardings,
    whatever the optimizer state looks like (it is never read); another params tree is the
    same clear error as a whole-state restore."""
    _save(tmp_path, [4, 6])
    state = _state(6)
    params, step = checkpoint.restore_params(str(tmp_path), _abstract(state.params))
    assert step == 6
    _assert_same(params, state.params)
    other = dict(state.params)
    other["w_renamed"] = other.pop("w")
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"fresh --workdir"):
        checkpoint.restore_params(str(tmp_path), _abstract(other))
