"""`llmos convert`, and `llmos generate` / `eval` on Hugging Face directories, end to end.

References: transformers' own greedy generation and tokenizer on the same directory, and
transformers loading what `convert --to-hf` writes.
"""

import json
import re

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmos_jax import checkpoint, cli
from llmos_jax.config import from_json
from llmos_jax.interop import tokenized_splits
from llmos_jax.runs import load_run
from llmos_jax.train.loop import build_experiment
from tests import hf_reference as ref

PROMPT = "The for statement"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A GPT-2 directory as the Hub has them: weights, config and a byte-level tokenizer.json."""
    path = tmp_path_factory.mktemp("gpt2")
    tok = ref.save_gpt2_tokenizer(path)
    model = ref.tiny_gpt2(eos_id=tok.eos_token_id)
    model.save_pretrained(path)
    return path, model, ref.auto_tokenizer(path)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def converted(gpt2_dir, tmp_path_factory):
    """`llmos convert --from-hf` of gpt2_dir: the run directory."""
    run = tmp_path_factory.mktemp("converted") / "run"
    assert cli.main(["convert", "--from-hf", str(gpt2_dir[0]), "--workdir", str(run)]) == 0
    return run


def test_convert_writes_a_run_directory(converted):
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "checkpoints"} <= names
    assert checkpoint.complete_steps(str(converted)) == [0]
    assert from_json((converted / "config.json").read_text()).model.family == "gpt2"


def test_generate_matches_transformers(gpt2_dir, converted, capsys):
    hf_dir, hf_model, hf_tok = gpt2_dir
    # transformers' greedy continuation of <|endoftext|> + prompt, stopping at eos.
    eos = hf_tok.eos_token_id
    prompt_ids = [eos, *hf_tok.encode(PROMPT, add_special_tokens=False)]
    new = ref.greedy(hf_model, prompt_ids, 8, eos_id=eos)
    want = PROMPT + hf_tok.decode([t for t in new if t != eos]) + "\n"
    for workdir in (converted, hf_dir):  # the converted run, and the Hugging Face directory
        args = ("--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8")
        code, out, _ = _run(capsys, "generate", "--workdir", workdir, *args)
        assert code == 0 and out == want


def _hf_heldout_loss(hf_model, rows) -> float:
    """transformers' mean next-token loss over each packed segment, run on its own."""
    total, count = 0.0, 0
    for tokens, segments in zip(rows["tokens"], rows["segment_ids"]):
        for seg in np.unique(segments[segments > 0]):
            ids = torch.as_tensor(tokens[segments == seg][None].astype(np.int64))
            if ids.shape[1] > 1:
                with torch.no_grad():
                    total += float(hf_model(ids, labels=ids).loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
    return total / count


def test_eval_matches_transformers_on_run_and_hf_directory(gpt2_dir, converted, capsys):
    hf_dir, hf_model, _ = gpt2_dir
    few = "data.max_documents=30"
    evals = [_run(capsys, "eval", "--workdir", w, f"--config.{few}") for w in (converted, hf_dir)]
    assert evals[0][0] == 0 and evals[0][1] == evals[1][1], evals  # same model, text, tokenizer
    loss = float(re.search(r"held-out loss ([0-9.]+)", evals[0][1]).group(1))
    run = load_run(str(hf_dir), [few])
    _, held_out = tokenized_splits(run.config, run.tokenizer)
    assert loss == pytest.approx(_hf_heldout_loss(hf_model, held_out), abs=1e-4)
    assert not (hf_dir / "tokenizer.model").exists()  # no tokenizer was trained into it


def test_export_loads_in_transformers(gpt2_dir, converted, tmp_path, capsys):
    _, hf_model, hf_tok = gpt2_dir
    out_dir = tmp_path / "exported"
    assert _run(capsys, "convert", "--workdir", converted, "--to-hf", out_dir)[0] == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tokens = np.random.default_rng(0).integers(0, ref.GPT2_VOCAB, (2, 20))
    np.testing.assert_allclose(
        ref.logits(reloaded, tokens), ref.logits(hf_model, tokens), atol=1e-4, rtol=0
    )
    assert reloaded.generation_config.eos_token_id == hf_tok.eos_token_id
    assert ref.auto_tokenizer(out_dir).encode(PROMPT) == hf_tok.encode(PROMPT)


def test_convert_refuses_to_overwrite(gpt2_dir, converted, capsys):
    code, _, err = _run(capsys, "convert", "--from-hf", gpt2_dir[0], "--workdir", converted)
    assert code == 2 and "already holds checkpoints" in err
    code, _, err = _run(capsys, "convert", "--workdir", converted, "--to-hf", gpt2_dir[0])
    assert code == 2 and "not empty" in err


def test_convert_names_the_unsupported_field(tmp_path, capsys):
    hf_dir = tmp_path / "llama"
    ref.tiny_llama().save_pretrained(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    code, _, err = _run(capsys, "convert", "--from-hf", hf_dir, "--workdir", tmp_path / "run")
    assert code == 2 and "rope_scaling" in err
    assert not (tmp_path / "run").exists()


def test_imported_run_restores_as_a_full_train_state(gpt2_dir, converted):
    """What `llmos train` resumes (fine-tunes) from: step 0, the imported params, zeroed Adam
    moments, restored into the train loop's own abstract state."""
    config = from_json((converted / "config.json").read_text())
    exp = build_experiment(config)
    ckpt = checkpoint.Checkpointer(str(converted), read_only=True, async_save=False)
    try:
        state, data_state = ckpt.restore(exp.abstract_state)
    finally:
        ckpt.close()
    assert int(state.step) == 0 and data_state["step"] == 0
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0 and x.size > 2]
    assert moments and all(not np.any(np.asarray(x)) for x in moments)
    wte = gpt2_dir[1].transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(state.params["embed"]["embedding"]), wte)
