"""Provenance: what produced a run, recorded so that it can be re-run and its results trusted.

Every run directory holds `config.json` (the resolved config), `tokenizer.model`, and
`provenance.json` (the latest start of the run); every checkpoint holds a `manifest.json` with
the same record plus its step, data position and a checksum of each file (see checkpoint.py).
`differences(recorded, current)` lists what changed between two records: a resumed or re-run
experiment warns with it, because a different commit, package or device count can change the
numbers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import uuid
from typing import Any

import jax
from etils import epath

PROVENANCE_FILE = "provenance.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
# Packages whose version can change a run's numbers or its files.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorstore",
    "numpy",
    "grain",
    "sentencepiece",
    "ml-collections",
    "etils",
    "gcsfs",
    "llmos_jax",
)
# Environment variables that change what XLA compiles (and so, possibly, the numbers).
XLA_ENV = ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "JAX_PLATFORMS", "JAX_DEFAULT_MATMUL_PRECISION")
_GIT_TIMEOUT_S = 10


def git_state(directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """{"commit", "dirty", "root"} of the git checkout holding `directory` (default: this
    package's source); commit None when it is not a checkout (e.g. an installed wheel)."""
    where = pathlib.Path(directory or pathlib.Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=_GIT_TIMEOUT_S,
        ).stdout.strip()

    try:
        root = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        # Untracked files count: a new, uncommitted module changes what runs.
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "root": None}
    return {"commit": commit, "dirty": dirty, "root": root}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def environment(mesh=None, rules=None) -> dict[str, Any]:
    """Backend, devices, hosts, mesh, axis rules and XLA settings of this process."""
    devices = jax.devices()
    env: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "platform": platform.platform(),
        "xla_env": {k: os.environ[k] for k in XLA_ENV if k in os.environ},
    }
    if mesh is not None:
        env["mesh"] = {str(k): int(v) for k, v in mesh.shape.items()}
    if rules is not None:
        env["axis_rules"] = [[name, list(m) if isinstance(m, tuple) else m] for name, m in rules]
    return env


def config_sha256(config) -> str:
    from llmos_jax.config import to_json

    return hashlib.sha256(to_json(config).encode()).hexdigest()


def collect(config=None, mesh=None, rules=None, data=None) -> dict[str, Any]:
    """The provenance record of this process; each argument adds its part when given.

    `data` is a DataBundle: its source description, fingerprint, stats and tokenizer hash.
    """
    record: dict[str, Any] = {
        "created_unix": time.time(),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "git": git_state(),
        "packages": package_versions(),
        "environment": environment(mesh, rules),
    }
    if config is not None:
        from llmos_jax.config import to_json

        record["config"] = json.loads(to_json(config))
        record["config_sha256"] = config_sha256(config)
    if data is not None:
        record["data"] = {
            "source": data.source_description,
            "fingerprint": data.fingerprint,
            "stats": dict(data.stats),
        }
        tok = data.tokenizer  # a SentencePiece Tokenizer, or an interop tokenizer without a hash
        record["tokenizer"] = {
            "sha256": getattr(tok, "sha256", None),
            "vocab_size": int(tok.vocab_size),
        }
    return record


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable lines for each way `current` differs from `recorded` (missing parts of
    either record are skipped: an older manifest may not have them)."""
    out = []

    def get(record, dotted):
        for key in dotted.split("."):
            if not isinstance(record, dict) or key not in record:
                return _MISSING
            record = record[key]
        return record

    checks = [
        ("git.commit", "git commit"),
        ("git.dirty", "uncommitted changes"),
        ("data.fingerprint", "data fingerprint"),
        ("tokenizer.sha256", "tokenizer"),
        ("environment.backend", "JAX backend"),
        ("environment.device_kinds", "device kinds"),
        ("environment.device_count", "device count"),
        ("environment.process_count", "host count"),
        ("environment.mesh", "mesh"),
        ("environment.axis_rules", "axis rules"),
        ("environment.xla_env", "XLA settings"),
    ]
    for dotted, label in checks:
        a, b = get(recorded, dotted), get(current, dotted)
        if a is not _MISSING and b is not _MISSING and a != b:
            out.append(f"{label}: {_short(a)} -> {_short(b)}")
    old, new = get(recorded, "config"), get(current, "config")
    if isinstance(old, dict) and isinstance(new, dict):
        flat_old, flat_new = _flatten(old), _flatten(new)
        for key in sorted(set(flat_old) | set(flat_new)):
            a, b = flat_old.get(key, "(unset)"), flat_new.get(key, "(unset)")
            if a != b:
                out.append(f"config {key}: {_short(a)} -> {_short(b)}")
    old, new = get(recorded, "packages"), get(current, "packages")
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) & set(new)):
            if old[name] != new[name]:
                out.append(f"package {name}: {old[name]} -> {new[name]}")
    return out


_MISSING = object()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def write_atomic(path: epath.Path, data: str | bytes) -> None:
    """A reader never sees a half-written file: a local file is written aside and renamed into
    place; an object store (gs://) makes each object visible only once complete anyway.

    os.replace, not epath's rename: that refuses an existing destination, and hosts sharing a
    workdir write the same files (a tokenizer each host trained; seen as a multi-host failure).
    """
    write = "write_bytes" if isinstance(data, bytes) else "write_text"
    if "://" in str(path):
        getattr(path, write)(data)
        return
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    getattr(tmp, write)(data)
    os.replace(tmp, path)


def write_run_files(workdir: str, config, tokenizer, record: dict[str, Any]) -> None:
    """config.json, tokenizer.model (when the run does not hold one yet) and provenance.json."""
    from llmos_jax.config import to_json

    if jax.process_index() != 0:
        return
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / CONFIG_FILE, to_json(config))
    if hasattr(tokenizer, "save") and not (path / TOKENIZER_FILE).exists():
        # A tokenizer given by data.tokenizer.path lives elsewhere: keep a copy with the run.
        tokenizer.save(path / TOKENIZER_FILE)
    write_atomic(path / PROVENANCE_FILE, json.dumps(record, indent=2, sort_keys=True))


def read_json(path: epath.Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def config_from_run(run_dir: str, workdir: str, overrides: list[str] | None = None):
    """The config of run `run_dir` (its own config.json) for a re-run into `workdir`.

    Copies the run's tokenizer into `workdir` when they differ, so the re-run tokenizes
    exactly as the original did. Returns (config, the run's newest provenance record or None).
    """
    from llmos_jax.config import apply_override, from_json

    source = epath.Path(run_dir)
    if not (source / CONFIG_FILE).exists():
        raise FileNotFoundError(f"--resume-from {run_dir}: no {CONFIG_FILE}; not a run directory")
    config = from_json((source / CONFIG_FILE).read_text())
    for item in overrides or []:
        apply_override(config, item)
    target = epath.Path(workdir)
    if str(target).rstrip("/") != str(source).rstrip("/") and jax.process_index() == 0:
        target.mkdir(parents=True, exist_ok=True)
        tok = source / TOKENIZER_FILE
        if tok.exists() and not (target / TOKENIZER_FILE).exists():
            (target / TOKENIZER_FILE).write_bytes(tok.read_bytes())
    return config, latest_record(run_dir)


def latest_record(run_dir: str) -> dict[str, Any] | None:
    """The provenance in the newest checkpoint's manifest, else the run's provenance.json (its
    latest start), else None."""
    from llmos_jax import checkpoint

    for step in reversed(checkpoint.complete_steps(run_dir)):
        manifest = checkpoint.read_manifest(run_dir, step)
        if manifest is not None and manifest.get("provenance"):
            return manifest["provenance"]
    return read_json(epath.Path(run_dir) / PROVENANCE_FILE)
