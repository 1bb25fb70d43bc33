"""Loading a run for eval / generate: an llmos run directory (config, tokenizer, latest params),
or a Hugging Face GPT-2 / Llama model directory (config.json + safetensors), told apart by the
files present."""

from __future__ import annotations

import dataclasses

import jax
from etils import epath

from llmos_jax import checkpoint
from llmos_jax.config import from_json
from llmos_jax.train.loop import Experiment, build_experiment


@dataclasses.dataclass
class LoadedRun:
    config: object
    experiment: Experiment
    params: object
    tokenizer: object  # llmos_jax.data.Tokenizer or an llmos_jax.interop tokenizer
    step: int
    workdir: str


def use_local_devices(config) -> None:
    """Whatever mesh the run trained on, evaluation and sampling use the devices at hand."""
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    if config.train.global_batch_size % jax.device_count():
        config.mesh.data, config.mesh.fsdp = 1, -1


def load_run(workdir: str, overrides: list[str] | None = None) -> LoadedRun:
    """Rebuilds a run's experiment from its own config.json and restores its latest checkpoint;
    for a Hugging Face model directory, builds the equivalent config and converts its weights."""
    from llmos_jax.config import apply_override
    from llmos_jax.interop import hf, load_tokenizer, place_params

    path = epath.Path(workdir)
    from_hf = hf.is_hf_model_dir(workdir)
    if from_hf:
        config = hf.config_from_hf(hf.read_hf_config(workdir))
    elif (path / "config.json").exists():
        config = from_json((path / "config.json").read_text())
    else:
        raise FileNotFoundError(
            f"{workdir} is not a run directory (no config.json); train first "
            f"with `llmos train --config ... --workdir {workdir}`"
        )
    for item in overrides or []:
        apply_override(config, item)
    use_local_devices(config)
    exp = build_experiment(config)
    if from_hf:
        params = place_params(hf.load_hf_params(workdir, exp.eval_model.cfg), exp)
        step = 0
    else:
        if not checkpoint.has_checkpoint(workdir):
            raise FileNotFoundError(f"{workdir} has no checkpoint yet")
        params, step = checkpoint.restore_params(workdir, exp.abstract_state.params)
    tokenizer = load_tokenizer(config.data.tokenizer.path or workdir)
    return LoadedRun(config, exp, params, tokenizer, step, workdir)
