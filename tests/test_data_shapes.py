"""The procedural image-caption set: deterministic, held out by combination, and every caption
describes its image, as read back from the pixels by rules written here (not the renderer's)."""

import pathlib

import numpy as np
import pytest

from llmos_jax.config import load_config
from llmos_jax.data import TrainBatches, build_data, eval_batches
from llmos_jax.data.shapes import sample_scenes

CLIP_TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "clip" / "tiny.py")
SIZE = 32
RGB = {  # what each colour word must look like
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}


def _config(seed: int = 0, num_train: int = 600, num_eval: int = 100):
    return load_config(
        CLIP_TINY,
        [f"seed={seed}", f"data.shapes.num_train={num_train}", f"data.shapes.num_eval={num_eval}"],
    )


@pytest.fixture(scope="module")
def bundle():
    return build_data(_config(), None)


def _captions(bundle, rows):
    return [bundle.tokenizer.decode(t) for t in rows["tokens"]]


# Each kind as words describe it, centred on its centroid, with its area in units of r^2.
AREA = {"circle": np.pi, "square": 4.0, "diamond": 2.0, "triangle": 2.0, "cross": 20 / 9}


def drawn_as(kind: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Pixels of `kind` of radius r, offsets (dy, dx) from its centroid (y down)."""
    ay, ax = np.abs(dy), np.abs(dx)
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return np.maximum(ay, ax) <= r
    if kind == "diamond":
        return ay + ax <= r
    if kind == "triangle":  # apex up, base 2r wide and 2r below it: the centroid is 2/3 down
        top = dy + 4 * r / 3  # distance below the apex
        return (top >= 0) & (top <= 2 * r) & (ax <= top / 2)
    return ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r))  # cross: two bars


def read_image(image: np.ndarray) -> dict:
    """What the pixels show: colour, place and area of the one shape on black, and its kind: the
    one that, drawn at the shape's centroid with its area, overlaps it best."""
    fg = image.max(-1) > 0
    rows, cols = np.nonzero(fg)
    colours = {tuple(int(v) for v in p) for p in image[fg]}
    dy = np.arange(SIZE)[:, None] - rows.mean()
    dx = np.arange(SIZE)[None, :] - cols.mean()

    def overlap(kind):
        ideal = drawn_as(kind, dy, dx, np.sqrt(fg.sum() / AREA[kind]))
        return (ideal & fg).sum() / (ideal | fg).sum()

    r, c = rows.mean() / SIZE, cols.mean() / SIZE
    if abs(r - 0.5) < 0.125 and abs(c - 0.5) < 0.125:
        place = "in the center"
    else:
        place = f"at the {'top' if r < 0.5 else 'bottom'} {'left' if c < 0.5 else 'right'}"
    kind = max(AREA, key=overlap)
    return {"colours": colours, "kind": kind, "place": place, "area": int(fg.sum())}


def test_captions_describe_their_images(bundle):
    areas, small_kinds = {}, []
    for split in (bundle.train, bundle.eval):
        for image, text in zip(split["images"], _captions(bundle, split)):
            words = text.split()
            assert words[0] == "a" and len(words) in (7, 8), text
            size, colour, kind = words[1:4]
            seen = read_image(image)
            assert seen["colours"] == {RGB[colour]}, text  # every shape pixel, exactly
            assert seen["place"] == " ".join(words[4:]), text
            if size == "large":
                assert seen["kind"] == kind, text
            else:  # 4 px across a radius, a diamond now and then pixelates into a disc
                small_kinds.append(seen["kind"] == kind)
            areas.setdefault((kind, size), []).append(seen["area"])
    assert np.mean(small_kinds) > 0.98
    for kind in AREA:
        assert max(areas[(kind, "small")]) < min(areas[(kind, "large")]), kind


def test_held_out_combinations_never_appear_in_training(bundle):
    train, held = set(_captions(bundle, bundle.train)), set(_captions(bundle, bundle.eval))
    assert not train & held
    assert 0 < len(held) <= bundle.stats["held_out_combinations"] < 300 * 0.2
    assert len(train) > 200  # 600 draws from the ~270 kept combinations cover most of them
    assert bundle.eval["images"].shape == (100, SIZE, SIZE, 3)
    assert bundle.train["images"].dtype == np.uint8


def test_generation_is_deterministic_and_index_stable(bundle):
    again = build_data(_config(), None)
    assert again.fingerprint == bundle.fingerprint
    for k in bundle.train:
        np.testing.assert_array_equal(again.train[k], bundle.train[k])
    # Scene i does not depend on how many are drawn.
    allowed = np.arange(300)
    ten, five = (sample_scenes(0, "train", n, allowed, SIZE) for n in (10, 5))
    for k in ten:
        np.testing.assert_array_equal(ten[k][:5], five[k])
    other = build_data(_config(seed=1), None)
    assert other.fingerprint != bundle.fingerprint
    assert set(_captions(other, other.eval)) != set(_captions(bundle, bundle.eval))


def test_batches_carry_images_with_their_captions(bundle):
    batches = TrainBatches(bundle.train, 8, seed=0)
    batch, rows = batches.batch(3), batches.row_indices(3)
    assert batch["images"].shape == (8, SIZE, SIZE, 3) and batch["images"].dtype == np.uint8
    np.testing.assert_array_equal(batch["images"], bundle.train["images"][rows])
    np.testing.assert_array_equal(batch["tokens"], bundle.train["tokens"][rows])
    np.testing.assert_array_equal(batch["loss_mask"], batch["segment_ids"] > 0)
    last = eval_batches(bundle.eval, 64)[-1]  # 100 = 64 + 36 real rows, then 28 padding rows
    assert not last["images"][36:].any() and not last["segment_ids"][36:].any()
    np.testing.assert_array_equal(last["images"][:36], bundle.eval["images"][64:])
