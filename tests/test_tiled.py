"""Tiled (sliding-window) inference in the runtime: blending, equality with whole-image
prediction, streaming in bands with bounded memory, background skipping, option checks."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from conftest import rgb
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import Preprocess
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.tiled import TiledPredictor, TileOptions, coverage, is_tissue, predict_array, starts, weights_1d


class PointwiseRunner:
    """A model whose class-1 logit at each pixel depends only on that pixel (red minus blue):
    every window agrees on every pixel, so any correct blending reproduces it exactly."""

    name = "pointwise"

    def infer(self, batch):
        fg = batch[:, 0] - batch[:, 2]
        return {"logits": np.stack([np.zeros_like(fg), fg], axis=1).astype(np.float32)}

    def close(self):
        pass


def pointwise(size=32, classes=("background", "fg")) -> Segmenter:
    info = {"preprocess": Preprocess(height=size, width=size).to_dict(), "classes": list(classes),
            "outputs": [{"name": "logits", "kind": "logits"}]}
    return Segmenter.from_runner(PointwiseRunner(), info)


def direct_probability(image: np.ndarray, pp: Preprocess) -> np.ndarray:
    x = image.astype(np.float32) * np.float32(pp.scale)
    x = (x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)
    return 1.0 / (1.0 + np.exp(-(x[..., 0] - x[..., 2])))


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(100, 77), (32, 200), (20, 45)])  # not multiples of the stride; smaller than a window
def test_blending_weights_normalise_exactly(blend, overlap, shape):
    seg = pointwise()
    image = rgb(*shape, seed=3)
    mask, probs = predict_array(seg, image, TileOptions(overlap=overlap, blend=blend, batch=3), probabilities=True)
    want = direct_probability(image, seg.preprocess_spec)
    np.testing.assert_allclose(probs[1], want, atol=2e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    assert mask.shape == shape and mask.dtype == np.uint8


def test_window_grid_and_weights():
    assert starts(100, 32, 24) == [0, 24, 48, 68]  # the last window ends at the edge
    assert starts(20, 32, 24) == [0]
    w = weights_1d(64, 48, "linear")
    assert w[16:48].min() == 1.0 and w[0] < 0.05 and np.allclose(w, w[::-1])
    g = weights_1d(64, 48, "gaussian")
    assert g.min() > 0 and g.argmax() in (31, 32)
    # adjacent linear ramps are complementary: each pixel of an evenly tiled axis sums to one
    cov = coverage(64 + 48 * 3, 64, starts(64 + 48 * 3, 64, 48), w)
    assert np.allclose(cov[16:-16], 1.0)


def test_single_window_equals_whole_image(tiny_bundle):
    seg = Segmenter(tiny_bundle)
    pp = seg.preprocess_spec
    image = rgb(pp.height, pp.width, seed=5)
    whole_mask, whole_p = seg.predict(image, probabilities=True)
    tiled_mask, tiled_p = seg.predict(image, probabilities=True, tiled=True)
    np.testing.assert_array_equal(tiled_mask, whole_mask)
    np.testing.assert_allclose(tiled_p, whole_p, atol=1e-5)


def test_tiled_equals_per_window_prediction_inside_windows(tiny_bundle):
    """Linear blending: where one window alone has weight (its core, away from the seams), the
    tiled result is that window's own whole-image prediction, exactly."""
    seg = Segmenter(tiny_bundle)
    image = rgb(150, 230, seed=7)
    opt = TileOptions(overlap=0.25, blend="linear", batch=4)
    mask, probs = predict_array(seg, image, opt, probabilities=True)
    tp = TiledPredictor(seg, 150, 230, None, opt)
    wh, ww = tp.window
    checked = 0
    for y0 in tp.ys:
        for x0 in tp.xs:
            rows = [y for y in range(y0, y0 + wh) if tp.cov_y[y] == 1 and tp.wy[y - y0] == 1]
            cols = [x for x in range(x0, x0 + ww) if tp.cov_x[x] == 1 and tp.wx[x - x0] == 1]
            if not rows or not cols:
                continue
            m, p = seg.predict(image[y0:y0 + wh, x0:x0 + ww], probabilities=True)
            sel = np.ix_(rows, cols)
            np.testing.assert_array_equal(mask[sel], m[np.ix_([y - y0 for y in rows], [x - x0 for x in cols])])
            np.testing.assert_allclose(probs[1][sel], p[1][np.ix_([y - y0 for y in rows], [x - x0 for x in cols])],
                                       atol=1e-6)
            checked += len(rows) * len(cols)
    assert checked > 0.2 * image.shape[0] * image.shape[1]


def _peak_bytes(seg, h, w, opt) -> tuple[int, int]:
    image = np.broadcast_to(rgb(1, w, seed=1)[:1], (h, w, 3))  # a view: the image costs no memory
    tp = TiledPredictor(seg, h, w, lambda y0, y1, x0, x1: np.ascontiguousarray(image[y0:y1, x0:x1]), opt)
    tracemalloc.start()
    rows = 0
    for _, _, m, _ in tp.rows():  # consumed and dropped, as a writer does
        rows += len(m)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == h
    return peak, tp.band_bytes()


def test_bands_stream_with_bounded_memory():
    seg = pointwise(size=32)
    opt = TileOptions(overlap=0.25, batch=8)
    small, band = _peak_bytes(seg, 256, 600, opt)
    large, _ = _peak_bytes(seg, 1024, 600, opt)  # 4x the rows
    assert large < 1.25 * small, (small, large)
    assert large < 8 * band  # a few band buffers, never the image's probabilities (1024*600*8 bytes)
    assert large < 1024 * 600 * 4


def test_rows_arrive_in_order_and_cover_the_image():
    seg = pointwise(size=32)
    image = rgb(130, 90, seed=2)
    tp = TiledPredictor(seg, 130, 90, lambda y0, y1, x0, x1: image[y0:y1, x0:x1], TileOptions(overlap=0.5))
    got = [(y0, len(m)) for y0, _, m, _ in tp.rows()]
    assert got[0][0] == 0 and sum(n for _, n in got) == 130
    assert all(a + n == b for (a, n), (b, _) in zip(got, got[1:]))
    assert tp.tiles == tp.total_windows and tp.skipped == 0


def test_skip_background_skips_white_windows():
    seg = pointwise(size=32)
    image = np.full((96, 160, 3), 245, np.uint8)
    image[:40, :50] = (150, 60, 140)  # an H&E-like purple patch in one corner
    tp = TiledPredictor(seg, 96, 160, lambda y0, y1, x0, x1: image[y0:y1, x0:x1],
                        TileOptions(skip_background=True))
    mask = np.concatenate([m for _, _, m, _ in tp.rows()])
    assert tp.skipped > 0 and tp.tiles > 0 and tp.tiles + tp.skipped == tp.total_windows
    assert mask[60:, 100:].max() == 0  # skipped windows are background
    assert is_tissue(image[:32, :32]) and not is_tissue(image[-32:, -32:])


@pytest.mark.parametrize("bad", [dict(overlap=0.95), dict(overlap=-0.1), dict(batch=0), dict(blend="box"),
                                 dict(scale=0), dict(overlap=float("nan")), dict(batch=True)])
def test_bad_tile_options_refused(bad):
    with pytest.raises(InputError, match="tile"):
        TileOptions(**bad)


def test_huge_array_refused_whole_points_at_tiling():
    seg = pointwise()
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))
    with pytest.raises(InputError, match="too large.*tiled=True"):
        seg.predict(huge)


def test_tiled_takes_gray_and_scale():
    seg = pointwise(size=32)
    gray = rgb(70, 90, seed=4)[:, :, 0]
    mask = seg.predict_tiled(gray, scale=0.5, overlap=0.25)
    assert mask.shape == (70, 90)
    tp = TiledPredictor(seg, 70, 90, None, TileOptions(scale=0.5))
    assert tp.window == (64, 64)  # 32 model pixels at half the source resolution
