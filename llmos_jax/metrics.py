"""Training metrics: `metrics.jsonl` in the workdir, a tqdm progress bar, and Weights & Biases.

File format: one JSON object per `log()` call, `{"step": int, "<name>": value, ...}`. Numbers are
written as floats; non-finite floats are written as the strings "nan", "inf" and "-inf" (strict
JSON has no NaN/Infinity, and `null` would lose which one it was); `read_metrics` turns them back
into floats. `step` is the number of completed optimizer steps, the same number checkpoints use.

Only the main process writes anything; on the others every method is a no-op.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from etils import epath
from tqdm.auto import tqdm

from llmos_jax import perf

METRICS_FILE = "metrics.jsonl"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode(value: Any) -> float | str:
    """A metric value as a JSON-safe scalar: floats, with non-finite ones as strings."""
    if isinstance(value, str):
        return value
    try:
        x = float(value)  # Python/numpy/jax scalars and size-1 arrays.
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric value {value!r} is not a number") from e
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _decode(record: dict[str, Any]) -> dict[str, Any]:
    return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}


def _parse_lines(text: str, where: str) -> list[dict[str, Any]]:
    """Parses JSON lines; a torn final line (a crash mid-write) is dropped, any other bad line
    raises, because silently skipping history would hide a real problem."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                break
            raise ValueError(f"{where}:{i + 1}: not a JSON object: {line[:80]!r}") from None
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl (or the workdir holding one) back into a list of dicts."""
    p = epath.Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    return [_decode(r) for r in _parse_lines(p.read_text(), str(p))]


def _section(config: Any, name: str) -> Mapping[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return config.get(name) or {}
    return getattr(config, name, None) or {}


class MetricsLogger:
    """Writes metrics to `workdir/metrics.jsonl`, a progress bar and (optionally) wandb.

    Use as a context manager, or call `close()`. On resume (`start_step` > 0) the file keeps its
    history up to `start_step`; lines for later steps came from progress that was never
    checkpointed and will be redone, so they are dropped rather than duplicated.
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None,
        config: Any,
        *,
        total_steps: int,
        start_step: int = 0,
        is_main_process: bool = True,
        show_progress: bool = True,
    ) -> None:
        self.is_main = is_main_process
        self.workdir = epath.Path(workdir) if workdir is not None else None
        self.path = self.workdir / METRICS_FILE if self.workdir is not None else None
        self._file = None
        self._remote_lines: list[str] | None = None  # Object stores cannot append: rewrite.
        self._wandb_run = None
        self._postfix: dict[str, str] = {}
        self._told_convention = False
        self._closed = False
        if self.is_main:
            if self.path is not None:
                self._open_file(start_step)
            try:
                self._init_wandb(config)
            except BaseException:
                if self._file is not None:  # Don't leak the handle when wandb refuses to start.
                    self._file.close()
                raise
        # Created last: wandb's start-up chatter and seconds then neither break nor slow the bar.
        self._bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (is_main_process and show_progress),
        )

    # -- file -----------------------------------------------------------------------------------

    def _open_file(self, start_step: int) -> None:
        assert self.workdir is not None and self.path is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text() if self.path.exists() else ""
        records = _parse_lines(text, str(self.path))
        kept = [json.dumps(r) for r in records if int(r.get("step", 0)) <= start_step]
        is_local = "://" not in str(self.path)
        if not is_local:
            self._remote_lines = kept
            return
        if len(kept) != len(records) or (text and not text.endswith("\n")):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()

    def _write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()  # A crash loses at most the current line.
        elif self._remote_lines is not None and self.path is not None:
            self._remote_lines.append(line)
            self.path.write_text("".join(x + "\n" for x in self._remote_lines))

    # -- wandb ----------------------------------------------------------------------------------

    def _init_wandb(self, config: Any) -> None:
        w = _section(config, "wandb")
        mode = str(w.get("mode") or "offline")
        # WANDB_MODE=disabled wins, and wandb is not even imported: its init spawns a service.
        if os.environ.get("WANDB_MODE", "").lower() == "disabled" or mode == "disabled":
            return
        import wandb

        local_dir = None
        if self.workdir is not None and "://" not in str(self.workdir):
            local_dir = str(self.workdir)  # wandb writes its files locally, next to metrics.jsonl
        name = w.get("name") or (self.workdir.name if self.workdir is not None else None)
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        self._wandb_run = wandb.init(
            project=w.get("project") or "llmos_jax",
            entity=w.get("entity") or None,
            name=name,
            mode=mode,
            dir=local_dir,
            config=cfg,
        )

    # -- public API -----------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records `metrics` at `step` (train or eval keys alike) and advances the bar to `step`."""
        if not self.is_main or self._closed:
            return
        record: dict[str, Any] = {"step": int(step)}
        record.update({str(k): _encode(v) for k, v in metrics.items()})
        self._write(json.dumps(record, allow_nan=False))
        if self._wandb_run is not None:
            self._wandb_run.log(
                {
                    k: _NONFINITE.get(v, v) if isinstance(v, str) else v
                    for k, v in record.items()
                    if k != "step"
                },
                step=int(step),
            )
        self._update_bar(int(step), metrics)

    def _update_bar(self, step: int, metrics: Mapping[str, Any]) -> None:
        if "train/loss" in metrics:
            self._postfix["loss"] = f"{float(metrics['train/loss']):.4f}"
        if "perf/tokens_per_s" in metrics:
            self._postfix["tok/s"] = _si(float(metrics["perf/tokens_per_s"]))
        if "perf/mfu" in metrics:
            value = float(metrics["perf/mfu"])
            self._postfix["mfu"] = f"{100 * value:.1f}%" if math.isfinite(value) else "nan"
            if not self._told_convention:  # Say once what the MFU number means.
                self._told_convention = True
                self.message(f"MFU convention: {perf.MFU_CONVENTION}")
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        if self._postfix:
            self._bar.set_postfix(self._postfix, refresh=True)

    def message(self, text: str) -> None:
        """Prints a line above the progress bar (main process only)."""
        if self.is_main:
            tqdm.write(text)

    def close(self) -> None:
        """Closes the bar, the file and the wandb run; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _si(x: float) -> str:
    """12345.6 -> '12.3k': short enough for the bar."""
    if not math.isfinite(x):
        return str(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
