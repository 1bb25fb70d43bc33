"""`llmos ckpt info RUN` and `llmos ckpt verify RUN`: what a run directory's checkpoints hold, and
whether their files are still what was written (local paths or gs://)."""

from __future__ import annotations

import datetime
import json
from typing import Any

from etils import epath

from llmos_jax import checkpoint, provenance


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _when(unix: float | None) -> str:
    if unix is None:
        return "?"
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary(manifest: dict[str, Any]) -> list[str]:
    """The manifest's provenance in a few lines."""
    p = manifest.get("provenance") or {}
    git, env, data = p.get("git") or {}, p.get("environment") or {}, p.get("data") or {}
    packages = p.get("packages") or {}
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    lines = [
        f"  saved:     {_when(manifest.get('saved_unix'))}",
        f"  git:       {git.get('commit') or 'not a git checkout'}{dirty}",
        f"  command:   {' '.join(p.get('command') or []) or '?'}",
        f"  devices:   {env.get('device_count', '?')} x {', '.join(env.get('device_kinds', []))}"
        f" ({env.get('backend', '?')}, {env.get('process_count', '?')} host(s)),"
        f" mesh {env.get('mesh', '?')}",
        f"  XLA:       {env.get('xla_env') or '{}'}",
        "  packages:  "
        + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if k in _SHOWN_PACKAGES),
    ]
    if data:
        lines.append(f"  data:      {data.get('source')} (fingerprint {data.get('fingerprint')})")
    if p.get("tokenizer"):
        lines.append(f"  tokenizer: sha256 {p['tokenizer'].get('sha256')}")
    position = manifest.get("data") or {}
    if position:
        lines.append(
            f"  position:  {position.get('examples_seen', '?')} examples seen "
            f"(seed {position.get('seed', '?')}, batch {position.get('global_batch_size', '?')})"
        )
    lines.append(f"  files:     {len(manifest.get('files', {}))} checksummed")
    return lines


_SHOWN_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "python")


def info(run: str, step: int | None = None, as_json: bool = False) -> str:
    """Steps, sizes and the newest (or `step`'s) manifest of run `run`."""
    steps = checkpoint.complete_steps(run)
    if as_json:
        chosen = step if step is not None else (steps[-1] if steps else None)
        out = {
            "run": run,
            "steps": {str(s): checkpoint.step_size(run, s) for s in steps},
            "incomplete": checkpoint.incomplete_saves(run),
            "manifest": checkpoint.read_manifest(run, chosen) if chosen is not None else None,
        }
        return json.dumps(out, indent=2, sort_keys=True)
    lines = [f"{checkpoint.checkpoint_dir(run)}:"]
    if not steps:
        lines.append("  no complete checkpoint")
    for s in steps:
        manifest = checkpoint.read_manifest(run, s)
        saved = _when(manifest.get("saved_unix")) if manifest else "no manifest"
        lines.append(f"  step {s:>8}  {_size(checkpoint.step_size(run, s)):>10}  {saved}")
    for name in checkpoint.incomplete_saves(run):
        lines.append(f"  {name}: incomplete (interrupted save or set aside); never restored")
    chosen = step if step is not None else (steps[-1] if steps else None)
    if chosen is not None:
        manifest = checkpoint.read_manifest(run, chosen)
        lines.append(f"manifest of step {chosen}:")
        lines += _summary(manifest) if manifest else ["  (none)"]
    record = provenance.read_json(epath.Path(run) / provenance.PROVENANCE_FILE)
    if record and chosen is not None and manifest:
        changed = provenance.differences(manifest.get("provenance") or {}, record)
        if changed:
            lines.append("the run's latest start (provenance.json) differs: " + "; ".join(changed))
    return "\n".join(lines)


def verify(run: str, steps: list[int] | None = None) -> tuple[bool, str]:
    """(all intact, report): every file of each checkpoint against its manifest's checksums."""
    available = checkpoint.complete_steps(run)
    chosen = steps or available
    if not chosen:
        return False, f"{checkpoint.checkpoint_dir(run)}: no complete checkpoint to verify"
    ok, lines = True, []
    for s in chosen:
        if s not in available:
            ok = False
            lines.append(f"step {s}: not a complete checkpoint (have {available})")
            continue
        problems = checkpoint.check_step(run, s, deep=True)
        if problems:
            ok = False
            lines.append(f"step {s}: DAMAGED")
            lines += [f"  {p}" for p in problems]
        else:
            files = len((checkpoint.read_manifest(run, s) or {}).get("files", {}))
            lines.append(f"step {s}: ok ({files} files match their sha256)")
    return ok, "\n".join(lines)
