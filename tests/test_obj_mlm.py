"""Masked LM: the loss against NumPy, the 80/10/10 rates over many draws, whole words, config
errors, the (2,2,2) mesh, and a short real run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.config import ConfigError
from llmos_jax.models import build_model
from llmos_jax.objectives.mlm import mlm_corrupt, word_start_table
from tests.helpers import random_batch
from tests.obj_helpers import (
    apply_fn,
    as_jax,
    assert_sharded_equals_single,
    held_out_before_after,
    init_params,
    numpy_xent,
    objective_config,
    segment_mask,
)

MASK_ID = 4  # "<mask>", the first user-defined symbol


class FakeTokenizer:
    """Pieces: specials, <mask>, then alternately a word start ("▁w5") and a continuation."""

    vocab_size = 128

    def id_to_piece(self, i: int) -> str:
        names = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
        if i < len(names):
            return names[i]
        return f"\u2581w{i}" if i % 2 == 0 else f"p{i}"


def _batch(seed: int = 0):
    b = random_batch(np.random.default_rng(seed), 2, 32, 128, 3)
    b["tokens"][:, 0] = 2  # bos and eos are never masked
    b["tokens"][:, 10] = 3
    b["tokens"][1, 28:] = 0  # padding at the end of row 1
    b["segment_ids"][1, 28:] = 0
    b["positions"][1, 28:] = 0
    b["loss_mask"][1, 28:] = 0
    return b


def _numpy_mlm(batch, rng, rates, lo, hi, starts_word=None):
    """(inputs, selected) from the draws the objective makes, with the rules written out."""
    mask_rate, p_mask, p_random = rates
    corrupt_rng, _ = jax.random.split(rng)
    k_select, k_action, k_random = jax.random.split(corrupt_rng, 3)
    shape = batch["tokens"].shape
    u = np.asarray(jax.random.uniform(k_select, shape))
    action = np.asarray(jax.random.uniform(k_action, shape))
    random_tokens = np.asarray(jax.random.randint(k_random, shape, lo, hi, dtype=jnp.int32))
    tokens, seg = batch["tokens"], batch["segment_ids"]
    inputs, selected = tokens.copy(), np.zeros(shape, bool)
    for i in range(shape[0]):
        word_u = None
        for t in range(shape[1]):
            new_word = t == 0 or seg[i, t] != seg[i, t - 1]
            if starts_word is None or new_word or starts_word[tokens[i, t]]:
                word_u = u[i, t]
            maskable = seg[i, t] > 0 and batch["loss_mask"][i, t] and tokens[i, t] not in (0, 2, 3)
            if not (maskable and word_u < mask_rate):
                continue
            selected[i, t] = True
            if action[i, t] < p_mask:
                inputs[i, t] = MASK_ID
            elif action[i, t] < p_mask + p_random:
                inputs[i, t] = random_tokens[i, t]
    return inputs, selected


def test_mlm_loss_matches_numpy():
    c = objective_config("mlm")
    c.objective.mask_rate, c.objective.mask_token_rate, c.objective.random_token_rate = (
        0.4,
        0.6,
        0.3,
    )
    model, params = init_params(c)
    apply, tokenizer = apply_fn(model), FakeTokenizer()
    batch, rng = _batch(), jax.random.PRNGKey(7)
    for whole_word in (False, True):
        c.objective.whole_word_masking = whole_word
        loss_fn = objectives.build(c, model, tokenizer)
        loss, metrics = jax.jit(loss_fn)(params, as_jax(batch), rng, {})

        starts = word_start_table(tokenizer, 128, 5) if whole_word else None
        inputs, selected = _numpy_mlm(batch, rng, (0.4, 0.6, 0.3), 5, 128, starts)
        assert (inputs == MASK_ID).any() and ((inputs != MASK_ID) & selected).any()
        assert (inputs[selected] == batch["tokens"][selected]).any()  # some kept as they are
        mask = segment_mask(batch["segment_ids"], causal=False)
        logits, _ = apply(params, inputs, batch["positions"], mask)
        want_loss, want_acc = numpy_xent(logits, batch["tokens"], selected)
        assert float(loss) == pytest.approx(want_loss, rel=1e-5)
        assert float(metrics["mlm/accuracy"]) == pytest.approx(want_acc, abs=1e-6)
        assert float(metrics["num_tokens"]) == selected.sum()


def test_mask_rates_match_config_over_many_draws():
    rng = np.random.default_rng(0)
    b, t, lo, hi = 64, 256, 10, 5000
    tokens = jnp.asarray(rng.integers(lo, hi, (b, t)), jnp.int32)
    seg = jnp.ones((b, t), jnp.int32)
    maskable = jnp.asarray(rng.random((b, t)) < 0.9)
    rates = (0.2, 0.7, 0.2)  # not the defaults, so the rates really come from the arguments
    corrupt = jax.jit(lambda k: mlm_corrupt(k, tokens, seg, maskable, None, 3, rates, (lo, hi)))
    counts = np.zeros(4)
    for d in range(10):
        inputs, selected = (np.asarray(x) for x in corrupt(jax.random.PRNGKey(d)))
        assert not (selected & ~np.asarray(maskable)).any()
        assert (inputs[~selected] == np.asarray(tokens)[~selected]).all()
        randomised = selected & (inputs != np.asarray(tokens)) & (inputs != 3)
        assert ((inputs[randomised] >= lo) & (inputs[randomised] < hi)).all()
        counts += [selected.sum(), (inputs == 3).sum(), randomised.sum(), maskable.sum()]
    selected_n, masked, randomised, maskable_n = counts
    assert selected_n / maskable_n == pytest.approx(0.2, abs=0.005)
    assert masked / selected_n == pytest.approx(0.7, abs=0.01)
    # A random piece equals the original 1 time in (hi - lo): rare enough to ignore.
    assert randomised / selected_n == pytest.approx(0.2, abs=0.01)


def test_whole_word_masking_selects_words_whole_at_the_configured_rate():
    tok = FakeTokenizer()
    table = word_start_table(tok, 130, 5)
    assert table[:5].all() and table[128:].all()  # specials, <mask> and unused ids start words
    assert table[6] and not table[7]  # "▁w6" starts a word, "p7" continues one
    rng = np.random.default_rng(1)
    b, t = 64, 128
    # Words of 1-4 pieces: an even id (word start) followed by odd ids (continuations).
    rows = []
    for _ in range(b):
        row = []
        while len(row) < t:
            row += [int(rng.integers(3, 64)) * 2] + [int(rng.integers(3, 64)) * 2 + 1] * int(
                rng.integers(0, 4)
            )
        rows.append(row[:t])
    tokens = jnp.asarray(rows, jnp.int32)
    seg = jnp.asarray(np.repeat([[1, 2]], t // 2, axis=1).reshape(1, t).repeat(b, 0), jnp.int32)
    starts = jnp.asarray(table)
    words, chosen = 0, 0
    for d in range(8):
        _, selected = mlm_corrupt(
            jax.random.PRNGKey(d),
            tokens,
            seg,
            jnp.ones((b, t), bool),
            starts,
            MASK_ID,
            (0.15, 0.8, 0.1),
            (5, 128),
        )
        selected, toks, sg = np.asarray(selected), np.asarray(tokens), np.asarray(seg)
        for i in range(b):
            word = []
            for j in range(t + 1):
                if j == t or table[toks[i, j]] or (j > 0 and sg[i, j] != sg[i, j - 1]):
                    if word:  # all pieces of a word share one fate
                        assert len(set(selected[i, word])) == 1
                        words, chosen = words + 1, chosen + int(selected[i, word[0]])
                    word = []
                if j < t:
                    word.append(j)
    assert chosen / words == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize(
    "field,value,names",
    [
        ("mask_rate", 1.5, "objective.mask_rate"),
        ("random_token_rate", 0.3, "objective.random_token_rate"),  # 0.8 + 0.3 > 1
        ("mask_token", "<blank>", "data.tokenizer.user_defined_symbols"),
        ("whole_word_masking", True, "objective.whole_word_masking"),  # no tokenizer given
    ],
)
def test_mlm_config_errors_name_the_field(field, value, names):
    c = objective_config("mlm")
    c.objective[field] = value
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        objectives.build(c, build_model(c))


def test_mlm_needs_its_fields_and_the_decoder():
    c = objective_config("mlm")
    del c.objective["mask_rate"]
    with pytest.raises(ConfigError, match=r"objective\.mask_rate"):
        objectives.build(c, build_model(c))
    c = objective_config("mlm")
    c.model.arch = "two_stream"
    with pytest.raises(ConfigError, match=r"model\.arch"):
        objectives.build(c, build_model(c))


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_mlm_loss_on_222_mesh_equals_single_device():
    c = objective_config("mlm", family="gpt2")
    c.objective.mask_rate = 0.3
    assert_sharded_equals_single(c, random_batch(np.random.default_rng(0), 8, 32, 128, 3))


@pytest.mark.slow
def test_mlm_tiny_config_lowers_held_out_loss(tmp_path):
    before, after = held_out_before_after("mlm", "wwm", str(tmp_path))
    assert before["eval/loss"] == pytest.approx(np.log(2048), abs=0.3)
    assert after["eval/loss"] < before["eval/loss"] - 0.75
    assert after["eval/mlm/accuracy"] > before["eval/mlm/accuracy"]
