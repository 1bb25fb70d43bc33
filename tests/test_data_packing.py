"""pack_documents: concat-then-split rows, checked by hand and against a plain-Python reference."""

import numpy as np
import pytest

from llmos_jax.data import pack_documents

BOS, EOS = 2, 3


def test_hand_worked_example():
    rows = pack_documents([[5, 6, 7], [8], [9, 10, 11, 12, 13]], seq_len=4, bos_id=BOS, eos_id=EOS)
    # Stream: 2 5 6 7 3 | 2 8 3 | 2 9 10 11 12 13 3  (15 tokens -> 4 rows, 1 padding slot)
    np.testing.assert_array_equal(
        rows["tokens"], [[2, 5, 6, 7], [3, 2, 8, 3], [2, 9, 10, 11], [12, 13, 3, 0]]
    )
    np.testing.assert_array_equal(
        rows["segment_ids"], [[1, 1, 1, 1], [1, 2, 2, 2], [1, 1, 1, 1], [1, 1, 1, 0]]
    )
    np.testing.assert_array_equal(
        rows["positions"], [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 0]]
    )
    assert all(v.dtype == np.int32 for v in rows.values())


def test_exact_fit_has_no_padding_row():
    rows = pack_documents([[7, 7], [8, 8]], seq_len=4, bos_id=BOS, eos_id=EOS)
    np.testing.assert_array_equal(rows["tokens"], [[2, 7, 7, 3], [2, 8, 8, 3]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 1]])


def test_empty_inputs():
    assert pack_documents([], 8, BOS, EOS)["tokens"].shape == (0, 8)
    rows = pack_documents([[]], 4, BOS, EOS)  # An empty document still gets bos + eos.
    np.testing.assert_array_equal(rows["tokens"], [[2, 3, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 0, 0]])


def reference_pack(docs, seq_len):
    """Token-by-token reference: walk the stream, start a segment at each bos or row start."""
    stream = [(tok, d) for d, doc in enumerate(docs) for tok in [BOS, *doc, EOS]]
    tokens, segs, poss = [], [], []
    for start in range(0, len(stream), seq_len):
        chunk = stream[start : start + seq_len]
        t, s, p = [], [], []
        seg, pos, prev_doc = 0, 0, None
        for i, (tok, d) in enumerate(chunk):
            if i == 0 or tok == BOS and d != prev_doc:
                seg, pos = seg + 1, 0
            t.append(tok), s.append(seg), p.append(pos)
            pos, prev_doc = pos + 1, d
        pad = seq_len - len(chunk)
        tokens.append(t + [0] * pad), segs.append(s + [0] * pad), poss.append(p + [0] * pad)
    return tokens, segs, poss


@pytest.mark.parametrize("seq_len", [1, 3, 16, 64])
def test_matches_reference_on_random_documents(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(4, 50, rng.integers(0, 40)).tolist() for _ in range(60)]
    rows = pack_documents(docs, seq_len, BOS, EOS)
    tokens, segs, poss = reference_pack(docs, seq_len)
    np.testing.assert_array_equal(rows["tokens"], tokens)
    np.testing.assert_array_equal(rows["segment_ids"], segs)
    np.testing.assert_array_equal(rows["positions"], poss)


def test_every_token_appears_in_order():
    rng = np.random.default_rng(0)
    docs = [rng.integers(4, 1000, rng.integers(1, 300)).tolist() for _ in range(200)]
    rows = pack_documents(docs, 37, BOS, EOS)
    valid = rows["segment_ids"] > 0
    assert valid.sum() == sum(len(d) + 2 for d in docs)
    assert valid[:-1].all()  # Only the last row has padding.
    stream = rows["tokens"][valid].tolist()
    assert stream == [t for d in docs for t in [BOS, *d, EOS]]
    # Within a segment, positions count up by one; each segment starts at 0.
    seg, pos = rows["segment_ids"], rows["positions"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    assert (pos[:, 1:][same] == pos[:, :-1][same] + 1).all()
    assert (pos[:, 1:][~same & (seg[:, 1:] > 0)] == 0).all() and (pos[:, 0] == 0).all()
