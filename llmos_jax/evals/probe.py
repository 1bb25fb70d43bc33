"""Which documentation topic is a passage from? A downstream probe for any token objective.

Task (`topic_dataset`): the `num_topics` longest topics of `pydoc_data.topics` (shipped with
CPython, so it runs offline), each cleaned as the pretraining pipeline does and tokenized with the
run's own tokenizer, cut into rows of [bos] + (seq_len - 1) contiguous tokens. Every topic gives
the same number of rows (chance is 1 / num_topics) and a seeded half of them is held out. Topics
such as "types", "typesseq" and "typesmapping" overlap in vocabulary, so the task is not solved
by a single keyword.

Features (`feature_fn`): the backbone's final hidden states (after its final norm), mean-pooled
over the row. Attention is causal for the causal-LM objective (how it was trained) and
bidirectional for every other: MLM and the span encoder trained bidirectionally, XLNet fine-tunes
its content stream without a permutation mask, and a prefix LM reads a whole passage as prefix.
An encoder-decoder contributes its encoder only. Two-stream (XLNet) weights are a decoder's
weights, so they run through `Decoder` as they are.

Two read-outs: `linear_probe` (frozen features, multinomial logistic regression with an L2
penalty on standardised features) and `fine_tune` (backbone plus a linear head on the pooled
features, AdamW, no dropout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmos_jax.data.cleaning import clean_text


@dataclasses.dataclass(frozen=True)
class TopicData:
    """Rows {tokens, segment_ids, positions} [N, T] int32 and labels [N] for each split."""

    train: dict[str, np.ndarray]
    train_labels: np.ndarray
    test: dict[str, np.ndarray]
    test_labels: np.ndarray
    names: tuple[str, ...]  # label i is topic names[i]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _rows(chunks: list[list[int]], bos_id: int) -> dict[str, np.ndarray]:
    tokens = np.asarray([[bos_id, *c] for c in chunks], np.int32).reshape(len(chunks), -1)
    n, t = tokens.shape
    return {
        "tokens": tokens,
        "segment_ids": np.ones((n, t), np.int32),
        "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy(),
    }


def topic_dataset(
    tokenizer,
    seq_len: int,
    num_topics: int = 8,
    per_topic: int | None = 64,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> TopicData:
    """Balanced topic-classification rows from Python's documentation; see the module docstring.

    `per_topic` rows per topic (None: as many as the shortest chosen topic gives); raises
    ValueError if a topic is too short for the number asked, naming it.
    """
    from pydoc_data.topics import topics

    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    # Longest first; the name breaks ties so the choice does not depend on dict order.
    names = sorted(topics, key=lambda k: (-len(topics[k]), k))[:num_topics]
    width = seq_len - 1
    chunked = {}
    for name in names:
        ids = tokenizer.encode(clean_text(topics[name]))
        chunked[name] = [ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]
    available = min(len(c) for c in chunked.values())
    n = available if per_topic is None else per_topic
    if n > available or n < 2:
        short = min(chunked, key=lambda k: len(chunked[k]))
        raise ValueError(
            f"per_topic={per_topic}: topic {short!r} gives only {available} rows of "
            f"{seq_len} tokens; lower per_topic, seq_len or num_topics"
        )
    n_test = max(1, round(n * test_fraction))
    rng = np.random.default_rng(seed)
    split = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(names):
        chunks = chunked[name]
        # Spread the kept rows over the whole topic, then split them at random.
        keep = np.linspace(0, len(chunks) - 1, n).round().astype(int)
        order = rng.permutation(keep)
        for part, idx in (("test", order[:n_test]), ("train", order[n_test:])):
            split[part][0].extend(chunks[i] for i in idx)
            split[part][1].extend([label] * len(idx))
    return TopicData(
        train=_rows(split["train"][0], tokenizer.bos_id),
        train_labels=np.asarray(split["train"][1], np.int32),
        test=_rows(split["test"][0], tokenizer.bos_id),
        test_labels=np.asarray(split["test"][1], np.int32),
        names=tuple(names),
    )


def backbone_params(config, params):
    """The parameters the features use: an encoder-decoder's encoder, a decoder without its head."""
    from llmos_jax.models.encdec import Encoder

    if config.model.arch == "encdec":
        return {k: params[k] for k in Encoder.PARAM_KEYS if k in params}
    return {k: v for k, v in params.items() if k != "lm_head"}


def feature_fn(config) -> Callable:
    """(backbone params, tokens, segment_ids, positions) -> mean-pooled features [B, D]."""
    from llmos_jax.config import resolved_model
    from llmos_jax.models import Decoder, ModelConfig, attention_mask
    from llmos_jax.models.encdec import Encoder

    cfg = ModelConfig.from_dict(resolved_model(config.model))
    arch = config.model.arch
    if arch == "encdec":
        encoder = Encoder(cfg)

        def hidden(params, tokens, segment_ids, positions):
            mask = attention_mask(segment_ids, causal=False)
            return encoder.apply({"params": params}, tokens, positions, mask)

    elif arch in ("decoder", "two_stream"):
        decoder, causal = Decoder(cfg), config.objective.name == "clm"

        def hidden(params, tokens, segment_ids, positions):
            mask = attention_mask(segment_ids, causal=causal)
            return decoder.apply({"params": params}, tokens, positions, mask, return_hidden=True)[0]

    else:
        raise ValueError(
            f"model.arch={arch!r}: the topic probe reads token features from a decoder, "
            "two-stream or encoder-decoder backbone"
        )

    def pooled(params, tokens, segment_ids, positions):
        h = hidden(params, tokens, segment_ids, positions).astype(jnp.float32)
        m = (segment_ids > 0)[..., None].astype(jnp.float32)
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    return pooled


def pooled_features(config, params, rows: dict[str, np.ndarray], batch_size: int = 32):
    """Features [N, D] (float32 NumPy) of all rows, in fixed-size batches (one compile)."""
    fn = jax.jit(feature_fn(config))
    params = backbone_params(config, params)
    n = len(rows["tokens"])
    out = []
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in rows.items()}
        short = batch_size - len(batch["tokens"])
        if short:  # pad with copies of the last row; their features are dropped below
            batch = {k: np.concatenate([v, np.repeat(v[-1:], short, 0)]) for k, v in batch.items()}
        feats = fn(params, batch["tokens"], batch["segment_ids"], batch["positions"])
        out.append(np.asarray(feats)[: batch_size - short])
    return np.concatenate(out)


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    l2: float = 1e-3,
    steps: int = 1000,
    lr: float = 0.05,
) -> dict[str, float]:
    """Logistic regression on frozen features -> {train_accuracy, test_accuracy, head}, `head`
    the classifier {w [D, C], b [C]} on unstandardised features (a start for `fine_tune`).

    Features are standardised with the training split's mean and std; the weights start at zero
    and full-batch Adam runs a fixed number of steps, so the result is deterministic.
    """
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    ys = jnp.asarray(train_y)
    w = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adam(lr)

    def loss(p):
        logits = xs @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
        return ce + l2 * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (w, _), _ = jax.lax.scan(jax.jit(step), (w, tx.init(w)), None, length=steps)
    # The same classifier on raw features: (x - mean) / std @ w + b = x @ w' + b'.
    raw_w = np.asarray(w["w"]) / std[:, None]
    raw_b = np.asarray(w["b"]) - mean @ raw_w
    return {
        "train_accuracy": _accuracy(xs @ w["w"] + w["b"], train_y),
        "test_accuracy": _accuracy(xt @ w["w"] + w["b"], test_y),
        "head": {"w": raw_w, "b": raw_b},
    }


def fine_tune(
    config,
    params,
    data: TopicData,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 16,
    weight_decay: float = 0.01,
    seed: int = 0,
    head: dict | None = None,
) -> dict[str, float]:
    """Backbone + linear head on the pooled features, trained on `data.train` with AdamW (linear
    warmup over the first tenth, then constant) -> {train_loss, test_accuracy}.

    `head` ({w [D, C], b [C]}, e.g. `linear_probe(...)["head"]`) starts the head from a fitted
    probe, "LP-FT" (Kumar et al., 2022): a zero head's first gradients would otherwise scramble
    the pretrained features before the head has learnt to read them. Default: a zero head.
    """
    if len(data.train_labels) < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(data.train_labels)} rows")
    pooled = feature_fn(config)
    d = config.model.d_model
    trainable = {
        "backbone": backbone_params(config, params),
        "head": {"w": jnp.zeros((d, data.num_classes)), "b": jnp.zeros((data.num_classes,))},
    }
    if head is not None:
        trainable["head"] = {k: jnp.asarray(head[k], jnp.float32) for k in ("w", "b")}
    schedule = optax.linear_schedule(0.0, lr, max(1, steps // 10))
    tx = optax.adamw(schedule, weight_decay=weight_decay)

    def logits_fn(p, rows):
        feats = pooled(p["backbone"], rows["tokens"], rows["segment_ids"], rows["positions"])
        return feats @ p["head"]["w"] + p["head"]["b"]

    def loss_fn(p, rows, labels):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, rows), labels)
        return ce.mean()

    @jax.jit
    def step(p, s, rows, labels):
        loss, g = jax.value_and_grad(loss_fn)(p, rows, labels)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    rng = np.random.default_rng(seed)
    n = len(data.train_labels)
    order = np.zeros(0, np.int64)
    state, loss = tx.init(trainable), jnp.nan
    for _ in range(steps):
        if len(order) < batch_size:  # a fresh epoch (the short tail is dropped, as drop_remainder)
            order = rng.permutation(n)
        idx, order = order[:batch_size], order[batch_size:]
        rows = {k: v[idx] for k, v in data.train.items()}
        trainable, state, loss = step(trainable, state, rows, data.train_labels[idx])
    eval_logits = jax.jit(logits_fn)
    test = []
    for start in range(0, len(data.test_labels), batch_size):
        rows = {k: v[start : start + batch_size] for k, v in data.test.items()}
        test.append(np.asarray(eval_logits(trainable, rows)))
    return {
        "train_loss": float(loss),
        "test_accuracy": _accuracy(np.concatenate(test), data.test_labels),
    }
