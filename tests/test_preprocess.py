import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.runtime.errors import InputError
from edgeseg.runtime.preprocess import Preprocess, postprocess, preprocess, resize, resize_matrix


@pytest.mark.parametrize("src,dst", [((100, 80), (50, 40)), ((1072, 1350), (256, 256)), ((97, 61), (32, 32))])
def test_downscale_matches_opencv_inter_area(src, dst):
    img = np.random.default_rng(0).integers(0, 256, (*src, 3)).astype(np.float32)
    ours = resize(img, *dst)
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(ours - ref).max() < 1e-2


@pytest.mark.parametrize("src,dst", [((16, 16), (64, 64)), ((64, 48), (1080, 1920)), ((7, 9), (20, 31))])
def test_upscale_matches_torch_bilinear(src, dst):
    x = np.random.default_rng(1).normal(size=(2, *src)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear",
                                          align_corners=False)[0].numpy()
    from edgeseg.runtime.preprocess import resize_chw

    assert np.abs(resize_chw(x, *dst) - ref).max() < 1e-4


def test_rows_of_resize_matrix_sum_to_one():
    for a, b in [(10, 3), (3, 10), (256, 256), (1000, 333)]:
        assert np.allclose(resize_matrix(a, b).sum(1), 1.0, atol=1e-5)


def test_preprocess_normalises_with_recorded_mean_std():
    pp = Preprocess(height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess(np.full((40, 50, 3), 255, np.uint8), pp)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x, (1.0 - 0.5) / 0.25)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), c=st.integers(2, 4))
def test_postprocess_maps_back_to_any_original_size(h, w, c):
    logits = np.random.default_rng(h * w).normal(size=(c, 16, 16)).astype(np.float32)
    mask, prob = postprocess(logits, h, w, probabilities=True)
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and mask.max() < c
    assert prob.shape == (c, h, w) and np.allclose(prob.sum(0), 1, atol=1e-4)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ([[1, 2]], "numpy array"),
])
def test_bad_images_rejected(bad, match):
    with pytest.raises(InputError, match=match):
        preprocess(bad, Preprocess(height=32, width=32))


def test_bad_preprocess_records_rejected():
    with pytest.raises(InputError, match="resize policy"):
        Preprocess(resize="crop")
    with pytest.raises(InputError, match="std"):
        Preprocess(std=(0, 1, 1))
