"""SimCSE, CLIP and SigLIP: each loss against a NumPy computation written from the papers, the
(2,2,2) mesh against one device, config errors, and the realistic presets' shapes."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax import objectives
from llmos_jax.config import ConfigError, load_config
from llmos_jax.config_checks import validate
from llmos_jax.mesh import axis_rules, batch_sharding, host_to_global, make_mesh, sharding_context
from llmos_jax.models import attention_mask, build_model
from llmos_jax.models.dual_encoder import segment_mean
from llmos_jax.objectives.contrastive import clip_loss, retrieval_top1, siglip_loss
from llmos_jax.train.init import abstract_train_state
from llmos_jax.train.optim import make_optimizer
from tests.helpers import random_batch

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(objective: str, *overrides: str):
    return load_config(str(CONFIGS / objective / "tiny.py"), ["wandb.mode=disabled", *overrides])


def _unit(rng, n, e):
    x = rng.normal(size=(n, e))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _np_log_softmax_diag(logits, valid):
    """-log softmax over valid columns, at the diagonal, one Python loop per row."""
    out = []
    for i in np.flatnonzero(valid):
        row = [logits[i, j] for j in np.flatnonzero(valid)]
        out.append(np.log(np.sum(np.exp(np.array(row, np.float64)))) - logits[i, i])
    return np.array(out)


def _np_clip(image, text, valid, logit_scale):
    scale = min(np.exp(logit_scale), 100.0)
    logits = scale * image.astype(np.float64) @ text.T.astype(np.float64)
    rows, cols = _np_log_softmax_diag(logits, valid), _np_log_softmax_diag(logits.T, valid)
    return float(np.mean((rows + cols) / 2))


def _np_siglip(image, text, valid, logit_scale, bias):
    logits = np.exp(logit_scale) * image.astype(np.float64) @ text.T.astype(np.float64) + bias
    total = 0.0
    for i in np.flatnonzero(valid):
        for j in np.flatnonzero(valid):
            label = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-label * logits[i, j]))  # -log sigmoid(label * logit)
    return total / valid.sum()


@pytest.mark.parametrize("logit_scale", [np.log(1 / 0.07), np.log(300.0)])  # 2nd: clipped at 100
def test_clip_loss_matches_numpy(logit_scale):
    rng = np.random.default_rng(0)
    image, text = _unit(rng, 6, 8), _unit(rng, 6, 8)
    valid = np.array([1, 1, 0, 1, 1, 1], bool)  # row 2: a padding row, neither query nor negative
    loss, _ = clip_loss(jnp.asarray(image), jnp.asarray(text), jnp.asarray(valid), logit_scale)
    np.testing.assert_allclose(float(loss), _np_clip(image, text, valid, logit_scale), rtol=1e-5)


def test_siglip_loss_matches_numpy():
    rng = np.random.default_rng(1)
    image, text = _unit(rng, 5, 8), _unit(rng, 5, 8)
    valid = np.array([1, 1, 1, 0, 1], bool)
    args = (jnp.asarray(image), jnp.asarray(text), jnp.asarray(valid), np.log(10.0), -3.0)
    loss, _ = siglip_loss(*args)
    expected = _np_siglip(image, text, valid, np.log(10.0), -3.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_retrieval_counts_its_pair_or_an_identical_caption():
    logits = np.array(
        [[5, 1, 0, 9], [0, 1, 2, 0], [0, 8, 3, 0], [0, 0, 0, 9]], np.float32
    )  # rows: images, columns: captions; column 3 is padding (invalid)
    keys = np.array([7, 8, 8, 9])  # captions 1 and 2 are the same text
    valid = np.array([1, 1, 1, 0], bool)
    got = retrieval_top1(jnp.asarray(logits), jnp.asarray(valid), jnp.asarray(keys))
    # i2t over valid columns: image 0 -> 0 (hit), 1 -> 2 (same text as 1: hit), 2 -> 1 (hit).
    assert float(got["retrieval/i2t_top1"]) == pytest.approx(1.0)
    # t2i over valid rows: caption 0 -> image 0 (hit), 1 -> image 2 (same text), 2 -> image 2.
    assert float(got["retrieval/t2i_top1"]) == pytest.approx(1.0)
    keys = np.array([7, 8, 6, 9])  # now all different: image 1 -> caption 2 and 2 -> 1 miss
    got = retrieval_top1(jnp.asarray(logits), jnp.asarray(valid), jnp.asarray(keys))
    assert float(got["retrieval/i2t_top1"]) == pytest.approx(1 / 3)
    assert float(got["retrieval/t2i_top1"]) == pytest.approx(2 / 3)  # caption 1 -> image 2


def test_segment_mean_matches_a_loop():
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(2, 9, 4)).astype(np.float32)
    seg = np.array([[1, 1, 2, 2, 2, 3, 4, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pooled, counts = segment_mean(jnp.asarray(hidden), jnp.asarray(seg), 3)  # segment 4: dropped
    for b in range(2):
        for m in range(3):
            sel = seg[b] == m + 1
            assert counts[b, m] == sel.sum()
            want = hidden[b, sel].mean(0) if sel.any() else np.zeros(4)
            np.testing.assert_allclose(np.asarray(pooled[b, m]), want, rtol=1e-6, atol=1e-7)


def image_text_batch(rng, b: int, image_size: int, t: int, vocab: int, padded_rows: int = 0):
    """Random images and one caption per row (lengths 3..t); the last rows may be padding."""
    tokens = np.zeros((b, t), np.int32)
    seg = np.zeros((b, t), np.int32)
    for i in range(b - padded_rows):
        n = rng.integers(3, t + 1)
        tokens[i, :n] = rng.integers(4, vocab, n)
        seg[i, :n] = 1
    images = rng.integers(0, 256, (b, image_size, image_size, 3)).astype(np.uint8)
    images[b - padded_rows :] = 0
    pos = np.where(seg > 0, np.arange(t), 0).astype(np.int32)
    return {"images": images, "tokens": tokens, "segment_ids": seg, "positions": pos,
            "loss_mask": seg.copy()}  # fmt: skip


def _params(model, seq_len: int):
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), *model.init_args(seq_len))
    return nn.meta.unbox(variables["params"])


def _on_mesh(config, model, params, batch, shape, outputs=None):
    """(loss, metrics, grads, outputs(params, batch)) of the objective under jit, with params and
    batch sharded over a (data, fsdp, tensor) mesh of `shape` by the config's logical rules, as
    the train step shards them. Everything comes back to the host as NumPy."""
    c = config
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
    mesh = make_mesh(c, jax.devices()[: int(np.prod(shape))])
    rules = axis_rules(c)
    tx, _ = make_optimizer(c)
    _, shardings = abstract_train_state(model, tx, mesh, rules, c.data.seq_len, c.seed)
    loss_fn = objectives.get(c.objective.name)(c, model)

    def run(p, b):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(p, b, jax.random.PRNGKey(3), {})
        return loss, metrics, grads, outputs(p, b) if outputs else None

    with sharding_context(mesh, rules):
        jitted = jax.jit(run, in_shardings=(shardings.params, batch_sharding(mesh)))
        sharded = jax.device_put(params, shardings.params)
        assert max(len(x.sharding.device_set) for x in jax.tree.leaves(sharded)) == np.prod(shape)
        return jax.device_get(jitted(sharded, host_to_global(batch, mesh)))


def _assert_same(sharded, single):
    """Loss and metrics to float32 reduction order; gradients likewise, leaf by leaf."""
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for k in single[1]:
        np.testing.assert_allclose(sharded[1][k], single[1][k], rtol=1e-5, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree.leaves(sharded[2]), jax.tree.leaves(single[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def clip_params():
    """Initialised once: SigLIP's towers are the same, only the scalars' initial values differ."""
    return _params(build_model(_config("clip")), 16)


@pytest.mark.quick_compile  # a few steps: compile time dominates
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_image_text_loss_on_222_mesh_equals_single_device_and_numpy(name, clip_params):
    """The [B, C] similarities span the global batch: sharding the batch 4 ways over (data,
    fsdp) and the weights over (fsdp, tensor) changes neither the loss nor the gradients."""
    c = _config(name)
    model = build_model(c)
    params = dict(clip_params)
    params["logit_scale"] = np.float32(c.model.logit_scale_init)
    params["logit_bias"] = np.float32(c.model.logit_bias_init)
    batch = image_text_batch(np.random.default_rng(3), 8, 32, 16, 128, padded_rows=1)
    keys = ("images", "tokens", "positions", "segment_ids")
    outputs = lambda p, b: model.apply({"params": p}, *(b[k] for k in keys))
    single = _on_mesh(c, model, params, batch, (1, 1, 1), outputs)
    sharded = _on_mesh(c, model, params, batch, (2, 2, 2))
    _assert_same(sharded, single)

    out = single[3]
    np.testing.assert_allclose(np.linalg.norm(out.image[:7], axis=1), 1.0, rtol=1e-5)
    valid = np.array([1] * 7 + [0], bool)  # the last row is padding
    scale, bias = c.model.logit_scale_init, c.model.logit_bias_init
    if name == "clip":
        expected = _np_clip(out.image, out.text, valid, scale)
    else:
        expected = _np_siglip(out.image, out.text, valid, scale, bias)
    for result in (single, sharded):  # the NumPy loss sees the full batch at once
        np.testing.assert_allclose(result[0], expected, rtol=1e-5)
    assert single[1]["num_tokens"] == 7


SIMCSE_SMALL = ("model.vocab_size=128", "model.max_len=32", "data.seq_len=24")


@pytest.fixture(scope="module")
def simcse_params():
    return _params(build_model(_config("simcse", *SIMCSE_SMALL)), 24)


def test_simcse_loss_matches_numpy(simcse_params):
    # temperature 0.5 keeps the loss O(1): at SimCSE's 0.05 an untrained encoder already tells
    # these random sentences apart, and a loss of ~1e-5 would only compare float32 rounding.
    c = _config("simcse", *SIMCSE_SMALL, "model.dropout_rate=0.0", "objective.max_segments=2",
                "objective.min_segment_tokens=3", "objective.temperature=0.5")  # fmt: skip
    model = build_model(c)
    batch = random_batch(np.random.default_rng(4), 4, 24, 128, docs_per_row=3)
    batch["segment_ids"][1, 18:] = 0  # some padding
    batch["segment_ids"][2, 8:10] = 1  # row 2: segment 1 (10 tokens) and a long segment 2
    batch["segment_ids"][2, 10:] = 2
    batch["segment_ids"][3, :2] = 1  # row 3: a 2-token segment (skipped), then segment 2
    batch["segment_ids"][3, 2:] = 2
    mask = attention_mask(jnp.asarray(batch["segment_ids"]), causal=False)
    hidden = lambda p, b: model.apply(
        {"params": p}, b["tokens"], b["positions"], mask, return_hidden=True
    )[0]
    loss, metrics, _, hidden = _on_mesh(c, model, simcse_params, batch, (1, 1, 1), hidden)
    sentences = []  # NumPy: segments 1..M of each row with >= 3 tokens, mean-pooled, unit norm
    for b in range(4):
        for s in (1, 2):
            sel = batch["segment_ids"][b] == s
            if sel.sum() >= 3:
                v = hidden[b, sel].astype(np.float64).mean(0)
                sentences.append(v / np.linalg.norm(v))
    z = np.stack(sentences)
    logits = z @ z.T / 0.5  # dropout off: the two views coincide
    expected = np.mean(_np_log_softmax_diag(logits, np.ones(len(z), bool)))
    assert metrics["num_tokens"] == len(z) == 7
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.quick_compile  # a few steps: compile time dominates
def test_simcse_loss_on_222_mesh_equals_single_device(simcse_params):
    """With dropout on: the two views' masks must not depend on the sharding either."""
    c = _config("simcse", *SIMCSE_SMALL, "objective.temperature=0.5")  # loss O(1), as above
    model = build_model(c, deterministic=False)
    batch = random_batch(np.random.default_rng(5), 8, 24, 128, docs_per_row=3)
    single = _on_mesh(c, model, simcse_params, batch, (1, 1, 1))
    sharded = _on_mesh(c, model, simcse_params, batch, (2, 2, 2))
    _assert_same(sharded, single)
    assert 0.5 < single[1]["simcse/positive_cosine"] < 0.9999  # the views differ


@pytest.mark.parametrize(
    "objective,override,field",
    [
        ("clip", "model.vision.patch_size=5", "model.vision.patch_size"),
        ("clip", "model.vision.n_heads=3", "model.vision.n_heads"),
        ("siglip", "model.arch='decoder'", "model.arch"),
        ("simcse", "objective.temperature=0.0", "objective.temperature"),
        ("simcse", "objective.max_segments=0", "objective.max_segments"),
    ],
)
def test_config_errors_name_the_field(objective, override, field):
    c = _config(objective, override)
    with pytest.raises(ConfigError, match=f"^{field}:"):
        validate(c, 8)
        objectives.get(objective)(c, build_model(c))


def _param_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("path", ["clip/vit_b16.py", "siglip/vit_b16.py", "simcse/bert_base.py"])
def test_realistic_presets_validate_and_build(path):
    c = load_config(str(CONFIGS / path))
    validate(c, 8)
    model = build_model(c)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.init_args(c.data.seq_len))
    params = params["params"]
    if "vision" in params:
        # torchvision's vit_b_16 has 86,567,656 params; without its 1000-class head (769,000),
        # class token (768) and the class token's position (768) that is 85,797,120.
        assert _param_count(params["vision"]) == 86_567_656 - 769_000 - 768 - 768
    else:  # BERT-base's encoder stack: 12 x 7,087,872 (attention + MLP + 2 LayerNorms)
        assert _param_count(params["layers"]) == 12 * 7_087_872
