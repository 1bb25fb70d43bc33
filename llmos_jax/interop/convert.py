"""`llmos convert`: a Hugging Face model directory <-> an llmos run directory.

An imported run is an ordinary run directory: config.json, the tokenizer files, and
checkpoints/0 holding a full TrainState (the converted params, a freshly initialised optimizer
state, step 0), so `llmos eval` / `generate` read it and `llmos train` can resume (fine-tune) it.
"""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import numpy as np
from etils import epath

from llmos_jax import checkpoint
from llmos_jax.config import apply_override, to_json
from llmos_jax.interop import hf
from llmos_jax.interop.tokenizers import (
    SENTENCEPIECE_MODEL,
    TOKENIZER_JSON,
    copy_tokenizer_files,
    load_tokenizer,
)

log = logging.getLogger(__name__)


def place_params(params: hf.Params, exp) -> hf.Params:
    """Puts numpy params on the experiment's devices with its shardings, after checking that
    their tree and shapes are exactly the model's (a mismatch is a converter bug, named here)."""
    want = exp.abstract_state.params
    got_paths = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(params)}
    for key, leaf in jax.tree.leaves_with_path(want):
        name = jax.tree_util.keystr(key)
        if got_paths.get(name) != leaf.shape:
            raise ValueError(
                f"converted params: {name} is {got_paths.get(name)}, the model expects {leaf.shape}"
            )
    if len(got_paths) != len(jax.tree.leaves(want)):
        raise ValueError("converted params hold leaves the model does not have")
    params = jax.tree.map(lambda x, a: np.asarray(x, a.dtype), params, want)
    return jax.device_put(params, exp.param_shardings)


def fresh_train_state(exp, params: hf.Params):
    """The TrainState a run starts from (step 0, fresh optimizer state) around given params.

    Adam's moments start at zero whatever the params are, so they come from `tx.init(params)`:
    the same tree `init_train_state` makes, without a random init of a whole second model.
    """
    from llmos_jax.train.state import TrainState

    opt_state = jax.jit(exp.tx.init, out_shardings=exp.shardings.opt_state)(params)
    state = TrainState(
        step=np.zeros((), np.int32),
        params=params,
        opt_state=opt_state,
        rng=np.asarray(jax.random.PRNGKey(int(exp.config.seed))),
        frozen={},
    )
    want = exp.abstract_state
    if jax.tree.structure(state) != jax.tree.structure(want):
        raise ValueError("imported TrainState does not match the train loop's (a converter bug)")
    return jax.device_put(state, exp.shardings)


def import_hf(hf_dir: str, workdir: str, overrides: list[str] | None = None):
    """Creates run directory `workdir` from Hugging Face model directory `hf_dir`.

    Returns the llmos config written to workdir/config.json. `overrides` (`a.b=value`) apply on
    top of the converted config (e.g. `train.steps=100` for a later fine-tune).
    """
    from llmos_jax.runs import use_local_devices
    from llmos_jax.train.loop import build_experiment

    if not hf.is_hf_model_dir(hf_dir):
        raise FileNotFoundError(
            f"{hf_dir} is not a Hugging Face model directory ({hf.CONFIG_FILE} with "
            f"{hf.WEIGHTS_FILE} or {hf.INDEX_FILE})"
        )
    if checkpoint.has_checkpoint(workdir):
        raise FileExistsError(f"{workdir} already holds checkpoints; convert into a new directory")
    config = hf.config_from_hf(hf.read_hf_config(hf_dir))
    for item in overrides or []:
        apply_override(config, item)
    use_local_devices(config)
    exp = build_experiment(config)
    params = place_params(hf.load_hf_params(hf_dir, exp.eval_model.cfg), exp)

    try:  # the model is worth importing even when its tokenizer is not usable here
        tokenizer = load_tokenizer(hf_dir)
        if tokenizer.vocab_size > config.model.vocab_size:
            log.warning(
                "tokenizer has %d tokens, the model only %d embeddings",
                tokenizer.vocab_size,
                config.model.vocab_size,
            )
    except (FileNotFoundError, ValueError) as e:
        log.warning("%s: no usable tokenizer (%s); set data.tokenizer.path to generate", hf_dir, e)

    out = epath.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    copy_tokenizer_files(hf_dir, out)
    # generation_config.json may hold the eos id when tokenizer_config.json does not.
    generation = pathlib.Path(hf_dir) / "generation_config.json"
    if generation.is_file():
        (out / generation.name).write_text(generation.read_text())
    state = fresh_train_state(exp, params)
    (out / "config.json").write_text(to_json(config))
    ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
    try:
        # The data position at step 0 (no data fingerprint: no data has been read yet).
        position = {"step": 0, "examples_seen": 0, "seed": int(config.seed)}
        position["global_batch_size"] = int(config.train.global_batch_size)
        ckpt.save(0, state, position)
    finally:
        ckpt.close()
    return config


def export_hf(
    workdir: str, hf_dir: str, overrides: list[str] | None = None, max_shard_bytes: int = 0
) -> list[str]:
    """Writes the latest params of run `workdir` as a Hugging Face model directory `hf_dir`.

    Returns the files written. Tokenizer files are copied as they are; the run's bos/eos ids go
    into config.json and generation_config.json so that transformers' generate stops at eos.
    """
    from llmos_jax.runs import load_run

    dst = pathlib.Path(hf_dir)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{hf_dir} is not empty; export into a new directory")
    run = load_run(workdir, overrides)
    if run.config.model.arch != "decoder":
        raise hf.UnsupportedModelError(f"model.arch={run.config.model.arch!r}: only decoder")
    cfg = run.experiment.eval_model.cfg
    tok = run.tokenizer
    hf_config = hf.hf_config_from(cfg, bos_id=tok.bos_id, eos_id=tok.eos_id)
    tensors = hf.params_to_hf(jax.device_get(run.params), cfg)
    files = hf.save_hf_model(dst, hf_config, tensors, max_shard_bytes)
    generation = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
    (dst / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tok_src = run.config.data.tokenizer.path
    if tok_src:  # a tokenizer file outside the run: saved under the name transformers expects
        name = TOKENIZER_JSON if tok_src.endswith(".json") else SENTENCEPIECE_MODEL
        (dst / name).write_bytes(epath.Path(tok_src).read_bytes())
        files.append(name)
    else:
        files += copy_tokenizer_files(workdir, dst)
    return [hf.CONFIG_FILE, "generation_config.json", *files]
