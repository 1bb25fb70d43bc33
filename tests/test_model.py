"""Model pieces against independent NumPy references, and document isolation in packed rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.models import attention_mask, build_model
from llmos_jax.models.layers import rope
from llmos_jax.objectives.common import masked_cross_entropy
from tests.helpers import init_params, random_batch, tiny_config


def numpy_rope(x, positions, theta):
    """Llama's rotate-half RoPE, written out per frequency pair (i, i + H/2)."""
    b, t, n, h = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for i in range(h // 2):
        freq = theta ** (-2.0 * i / h)
        ang = positions[:, :, None] * freq  # [B, T, 1]
        a, bb = x[..., i], x[..., i + h // 2]
        out[..., i] = a * np.cos(ang) - bb * np.sin(ang)
        out[..., i + h // 2] = bb * np.cos(ang) + a * np.sin(ang)
    return out


def test_rope_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 100, (2, 7))
    got = rope(jnp.asarray(x), jnp.asarray(pos), 10000.0)
    np.testing.assert_allclose(np.asarray(got), numpy_rope(x, pos, 10000.0), rtol=1e-5, atol=1e-5)


def test_rope_preserves_relative_position():
    # <rope(q, m), rope(k, n)> depends only on m - n: the property RoPE exists for.
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))
    dot = lambda m, n: float(
        jnp.sum(rope(q, jnp.array([[m]]), 1e4) * rope(k, jnp.array([[n]]), 1e4))
    )
    assert dot(5, 2) == pytest.approx(dot(13, 10), rel=1e-4)


def numpy_attention(q, k, v, mask):
    """Softmax attention with grouped KV heads: q [B,T,N,H], k/v [B,S,K,H], mask [B,1,T,S]."""
    n, kh = q.shape[2], k.shape[2]
    k = np.repeat(k, n // kh, axis=2)
    v = np.repeat(v, n // kh, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def test_attention_layer_matches_numpy():
    c = tiny_config("llama", n_heads=4, n_kv_heads=2, position="sinusoidal")
    model = build_model(c)
    params = init_params(model)
    attn = params["layers"]["attn"]
    rng = np.random.default_rng(2)
    batch = random_batch(rng, 2, 12, 128, docs_per_row=2)
    mask = np.asarray(attention_mask(jnp.asarray(batch["segment_ids"])))
    x = rng.normal(size=(2, 12, 64)).astype(np.float32)
    from llmos_jax.models.layers import Attention

    layer0 = jax.tree.map(lambda a: a[0], attn)
    got, _ = Attention(model.cfg).apply(
        {"params": layer0}, jnp.asarray(x), jnp.asarray(batch["positions"]), jnp.asarray(mask)
    )
    q = np.einsum("btd,dnh->btnh", x, np.asarray(layer0["query"]["kernel"]))
    k = np.einsum("btd,dkh->btkh", x, np.asarray(layer0["key"]["kernel"]))
    v = np.einsum("btd,dkh->btkh", x, np.asarray(layer0["value"]["kernel"]))
    ref = np.einsum(
        "btnh,nhd->btd", numpy_attention(q, k, v, mask), np.asarray(layer0["out"]["kernel"])
    )
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-4, atol=2e-5)


def test_mask_is_causal_and_segmented():
    seg = jnp.array([[1, 1, 2, 2, 0]])
    m = np.asarray(attention_mask(seg))[0, 0]
    expected = np.array(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool
    )
    np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packing_isolates_documents(family):
    """Changing one document leaves the logits of the other document in the same row unchanged."""
    c = tiny_config(family)
    model = build_model(c)
    params = init_params(model)
    rng = np.random.default_rng(3)
    batch = random_batch(rng, 1, 24, 128, docs_per_row=2)
    first = batch["segment_ids"][0] == 1
    changed = batch["tokens"].copy()
    changed[0, first] = rng.integers(4, 128, first.sum())  # rewrite document 1 entirely

    def logits(tokens):
        out, _ = model.apply(
            {"params": params},
            jnp.asarray(tokens),
            jnp.asarray(batch["positions"]),
            attention_mask(jnp.asarray(batch["segment_ids"])),
        )
        return np.asarray(out)

    a, b = logits(batch["tokens"]), logits(changed)
    np.testing.assert_allclose(a[0, ~first], b[0, ~first], atol=1e-6)  # document 2 unchanged
    assert np.abs(a[0, first] - b[0, first]).max() > 1e-3  # document 1 did change


def test_scan_and_unrolled_layers_agree():
    c = tiny_config("llama")
    scanned = build_model(c)
    params = init_params(scanned)
    c.model.scan_layers = False
    unrolled = build_model(c)
    per_layer = {k: v for k, v in params.items() if k != "layers"}
    for i in range(c.model.n_layers):
        per_layer[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    batch = random_batch(np.random.default_rng(4), 2, 16, 128)
    args = (
        jnp.asarray(batch["tokens"]),
        jnp.asarray(batch["positions"]),
        attention_mask(jnp.asarray(batch["segment_ids"])),
    )
    a, _ = scanned.apply({"params": params}, *args)
    b, _ = unrolled.apply({"params": per_layer}, *args)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_remat_does_not_change_gradients():
    c = tiny_config("llama")
    base = build_model(c)
    params = init_params(base)
    c.model.remat = "full"
    remat = build_model(c)
    batch = random_batch(np.random.default_rng(5), 2, 16, 128)
    args = (
        jnp.asarray(batch["tokens"]),
        jnp.asarray(batch["positions"]),
        attention_mask(jnp.asarray(batch["segment_ids"])),
    )
    loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, *args)[0] ** 2)
    ga, gb = jax.grad(loss(base))(params), jax.grad(loss(remat))(params)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_masked_cross_entropy_matches_numpy():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    z = 1e-2
    loss, m = masked_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z
    )
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    ref_xent = (nll * weights).sum() / weights.sum()
    ref_z = (lse**2 * weights).sum() / weights.sum()
    assert float(m["loss"]) == pytest.approx(ref_xent, rel=1e-5)
    assert float(loss) == pytest.approx(ref_xent + z * ref_z, rel=1e-5)
    assert float(m["num_tokens"]) == weights.sum()
    acc = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    assert float(m["accuracy"]) == pytest.approx(acc)


def test_clm_loss_ignores_cross_document_targets():
    """The CLM loss equals a NumPy next-token NLL over same-document pairs only."""
    from llmos_jax import objectives

    c = tiny_config("gpt2")
    model = build_model(c)
    params = init_params(model)
    batch = random_batch(np.random.default_rng(7), 2, 16, 128, docs_per_row=3)
    loss_fn = objectives.get("clm")(c, model)
    _, metrics = loss_fn(
        params, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.PRNGKey(0), {}
    )
    logits, _ = model.apply(
        {"params": params},
        jnp.asarray(batch["tokens"]),
        jnp.asarray(batch["positions"]),
        attention_mask(jnp.asarray(batch["segment_ids"])),
    )
    logits = np.asarray(logits, np.float64)
    seg, tok = batch["segment_ids"], batch["tokens"]
    nll = []
    for b in range(2):
        for t in range(15):
            if seg[b, t] == seg[b, t + 1]:
                lse = np.log(np.exp(logits[b, t]).sum())
                nll.append(lse - logits[b, t, tok[b, t + 1]])
    assert float(metrics["num_tokens"]) == len(nll) == 2 * (16 - 3)
    assert float(metrics["loss"]) == pytest.approx(np.mean(nll), rel=1e-5)
