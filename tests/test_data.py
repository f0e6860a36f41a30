import numpy as np
import pytest

import conftest
from conftest import write_img
from edgeseg.data import folders as D
from edgeseg.errors import DataError


def rgb(h=20, w=30, seed=0):
    return conftest.rgb(h, w, seed)


def mask01(h=20, w=30):
    return conftest.mask01(h, w, value=1)


def test_same_name_masks_in_masks_folder(tmp_path):
    write_img(tmp_path / "images/a.jpg", rgb())
    write_img(tmp_path / "masks/a.png", mask01() * 255)
    (s,) = D.discover(tmp_path)
    img, m = D.load_pair(s)
    assert img.shape == (20, 30, 3) and m.dtype == np.uint8
    assert (m == mask01()).all()


def test_mask_suffix_extra_masks_are_ored_and_names_with_spaces(tmp_path):
    write_img(tmp_path / "images/benign/benign (1).png", rgb())
    a = np.zeros((20, 30), np.uint8)
    a[0:5, 0:5] = 255
    b = np.zeros((20, 30), np.uint8)
    b[10:15, 10:15] = 255
    write_img(tmp_path / "masks/benign/benign (1)_mask.png", a)
    write_img(tmp_path / "masks/benign/benign (1)_mask_1.png", b)
    (s,) = D.discover(tmp_path)
    assert s.name == "benign/benign (1)" and len(s.masks) == 2
    _, m = D.load_pair(s)
    assert m.sum() == 50


def test_jpeg_mask_noise_thresholded_and_rgb_mask(tmp_path):
    m = mask01() * 255
    noisy = np.stack([m] * 3, -1).astype(np.int16) + np.random.default_rng(1).integers(-40, 40, (20, 30, 3))
    write_img(tmp_path / "images/x.png", rgb())
    write_img(tmp_path / "masks/x.jpg", noisy.clip(0, 255).astype(np.uint8))
    (s,) = D.discover(tmp_path)
    _, got = D.load_pair(s)
    assert (got == mask01()).mean() > 0.98


def test_zero_one_png_and_tiff_image(tmp_path):
    write_img(tmp_path / "images/t.tif", rgb())
    write_img(tmp_path / "masks/t.png", mask01())
    _, m = D.load_pair(D.discover(tmp_path)[0])
    assert (m == mask01()).all()


def test_one_bit_png_mask(tmp_path):
    from PIL import Image

    write_img(tmp_path / "images/o.png", rgb())
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask01().astype(bool)).convert("1").save(tmp_path / "masks/o_mask.png")
    _, m = D.load_pair(D.discover(tmp_path)[0])
    assert (m == mask01()).all()


def test_multiclass_label_ids(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[:5] = 1
    m[10:] = 2
    write_img(tmp_path / "images/c.png", rgb())
    write_img(tmp_path / "masks/c.png", m)
    _, got = D.load_pair(D.discover(tmp_path)[0], num_classes=3)
    assert (got == m).all()
    with pytest.raises(DataError, match="not binary"):
        D.load_pair(D.discover(tmp_path)[0], num_classes=2)


def test_label_beyond_declared_classes(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[:5] = 5
    write_img(tmp_path / "images/c.png", rgb())
    write_img(tmp_path / "masks/c.png", m)
    with pytest.raises(DataError, match="label 5 but only 3 classes"):
        D.load_pair(D.discover(tmp_path)[0], num_classes=3)


def test_split_file(tmp_path):
    for n in "abc":
        write_img(tmp_path / f"images/{n}.png", rgb())
        write_img(tmp_path / f"masks/{n}.png", mask01())
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits/val.txt").write_text("c\na\n")
    assert [s.name for s in D.discover(tmp_path, "val")] == ["c", "a"]
    (tmp_path / "splits/bad.txt").write_text("zzz\n")
    with pytest.raises(DataError, match="have no image"):
        D.discover(tmp_path, "bad")
    with pytest.raises(DataError, match="not found"):
        D.discover(tmp_path, "nosuch")


@pytest.mark.parametrize("case,match", [
    ("image_without_mask", "has no mask"),
    ("mask_without_image", "have no image"),
    ("empty", "no images"),
    ("missing", "not found"),
    ("non_binary", "not binary"),
])
def test_folder_errors(tmp_path, case, match):
    if case != "missing":
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
    if case in ("image_without_mask", "mask_without_image", "non_binary"):
        write_img(tmp_path / "images/a.png", rgb())
        write_img(tmp_path / "masks/a.png", mask01() * (7 if case == "non_binary" else 255))
    if case == "image_without_mask":
        write_img(tmp_path / "images/b.png", rgb())
    if case == "mask_without_image":
        write_img(tmp_path / "masks/zz.png", mask01())
    root = tmp_path / ("nope" if case == "missing" else "")
    with pytest.raises(DataError, match=match):
        samples = D.discover(root)
        for s in samples:
            D.load_pair(s)


def test_mask_size_mismatch_and_corrupt_files(tmp_path):
    write_img(tmp_path / "images/a.png", rgb())
    write_img(tmp_path / "masks/a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="10x10 but image a.png is 30x20"):
        D.load_pair(D.discover(tmp_path)[0])
    (tmp_path / "images/a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="corrupt or truncated"):
        D.read_image(tmp_path / "images/a.png")
    (tmp_path / "images/a.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        D.read_image(tmp_path / "images/a.png")


def test_image_variants_are_normalised_to_rgb_uint8(tmp_path):
    g = write_img(tmp_path / "g.png", np.full((4, 5), 9, np.uint8))
    assert D.read_image(g).shape == (4, 5, 3)
    rgba = write_img(tmp_path / "r.png", np.zeros((4, 5, 4), np.uint8))
    assert D.read_image(rgba).shape == (4, 5, 3)
    s16 = write_img(tmp_path / "s.png", np.full((4, 5), 65535, np.uint16))
    im = D.read_image(s16)
    assert im.dtype == np.uint8 and im.max() == 255
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    assert D.read_image(write_img(tmp_path / "c.png", bgr))[0, 0, 0] == 200


def test_real_layouts(shared_data):
    for name, split, n in [("kvasir-seg", "val", 100), ("busi-subset", "val", 24), ("monuseg-train", "val", 6)]:
        samples = D.discover(shared_data / name, split)
        assert len(samples) == n
        img, m = D.load_pair(samples[0])
        assert img.shape[:2] == m.shape and set(np.unique(m)) <= {0, 1}
    busi = D.discover(shared_data / "busi-subset")
    assert any(len(s.masks) == 2 for s in busi)


# --- no silent subsets -------------------------------------------------------------------
def test_two_masks_with_one_name_refused_by_name(tmp_path):
    write_img(tmp_path / "images/a.png", rgb())
    write_img(tmp_path / "masks/a.png", mask01() * 255)
    write_img(tmp_path / "masks/a.jpg", mask01() * 255)
    with pytest.raises(DataError, match="two masks share the name 'a'"):
        D.discover(tmp_path)


def test_unreadable_subfolder_is_named_not_skipped(tmp_path, monkeypatch):
    """A sub-folder the walk cannot list (permissions; root reads anything, so simulated)."""
    import os

    write_img(tmp_path / "images/a.png", rgb())
    write_img(tmp_path / "images/locked/b.png", rgb(seed=1))
    write_img(tmp_path / "masks/a.png", mask01() * 255)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match="cannot read .*locked: Permission denied"):
        D.discover(tmp_path)


def test_broken_link_is_named(tmp_path):
    write_img(tmp_path / "images/a.png", rgb())
    write_img(tmp_path / "masks/a.png", mask01() * 255)
    (tmp_path / "images/gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="gone.png is a link to nothing"):
        D.discover(tmp_path)


def test_linked_subfolder_is_followed_once(tmp_path):
    other = tmp_path / "elsewhere"
    write_img(other / "b.png", rgb(seed=1))
    write_img(tmp_path / "d/images/a.png", rgb())
    (tmp_path / "d/images/more").symlink_to(other, target_is_directory=True)
    (tmp_path / "d/images/loop").symlink_to(tmp_path / "d/images", target_is_directory=True)
    write_img(tmp_path / "d/masks/a.png", mask01() * 255)
    write_img(tmp_path / "d/masks/more/b.png", mask01() * 255)
    names = sorted(s.name for s in D.discover(tmp_path / "d"))
    assert names == ["a", "more/b"]


def test_mask_content_decides_lossy_not_its_extension(tmp_path):
    """A {0,1} PNG named .jpg keeps its foreground (thresholding it at 128 would empty it)."""
    import cv2

    write_img(tmp_path / "images/a.png", rgb())
    ok, png = cv2.imencode(".png", mask01())
    (tmp_path / "masks").mkdir()
    png.tofile(str(tmp_path / "masks/a.jpg"))
    (s,) = D.discover(tmp_path)
    _, m = D.load_pair(s)
    assert (m == mask01()).all()


def test_jpeg_mask_of_zeros_and_ones_is_not_emptied(tmp_path):
    write_img(tmp_path / "images/a.png", rgb())
    write_img(tmp_path / "masks/a.jpg", mask01())  # real JPEG, values {0,1} plus noise
    (s,) = D.discover(tmp_path)
    _, m = D.load_pair(s)
    agree = (m == mask01()).mean()
    assert m.sum() > 0.8 * mask01().sum() and agree > 0.95
