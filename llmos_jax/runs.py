"""Loading a finished (or running) run directory: config, tokenizer and latest params."""

from __future__ import annotations

import dataclasses

import jax
from etils import epath

from llmos_jax import checkpoint
from llmos_jax.config import from_json
from llmos_jax.data import Tokenizer
from llmos_jax.train.loop import Experiment, build_experiment


@dataclasses.dataclass
class LoadedRun:
    config: object
    experiment: Experiment
    params: object
    tokenizer: Tokenizer
    step: int
    workdir: str


def load_run(workdir: str, overrides: list[str] | None = None) -> LoadedRun:
    """Rebuilds a run's experiment from its own config.json and restores its latest checkpoint."""
    from llmos_jax.config import apply_override

    path = epath.Path(workdir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{workdir} is not a run directory (no config.json); train first "
            f"with `llmos train --config ... --workdir {workdir}`"
        )
    config = from_json((path / "config.json").read_text())
    for item in overrides or []:
        apply_override(config, item)
    # Whatever mesh the run trained on, evaluation and sampling use the devices at hand.
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    if config.train.global_batch_size % jax.device_count():
        config.mesh.data, config.mesh.fsdp = 1, -1
    exp = build_experiment(config)
    if not checkpoint.has_checkpoint(workdir):
        raise FileNotFoundError(f"{workdir} has no checkpoint yet")
    params, step = checkpoint.restore_params(workdir, exp.abstract_state)
    tok_path = config.data.tokenizer.path or str(path / "tokenizer.model")
    return LoadedRun(config, exp, params, Tokenizer.load(tok_path), step, workdir)
