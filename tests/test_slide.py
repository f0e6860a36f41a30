"""Whole slides: TIFFs read region by region, masks written as tiled TIFFs row by row, the
preview, corrupt tiles, the rule that routes large TIFFs to the tiled path, and `edgeseg predict`
on a slide (small synthetic TIFFs written with tifffile in tmp)."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from badinput import cli, refused, worked
from conftest import rgb
from edgeseg.predict_slide import is_slide
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.runtime.slide import Preview, TiffSlide, png_bytes, segment_slide, write_mask_tiff
from edgeseg.runtime.tiled import TileOptions, predict_array
from test_tiled import pointwise

tifffile = pytest.importorskip("tifffile", reason="the medical extra (tifffile) is part of dev installs")


def smooth(h, w, seed=0) -> np.ndarray:
    """An H&E-like RGB image that compresses well (gradients plus blobs)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.random.default_rng(seed)
    img = np.stack([180 + 60 * np.sin(x / 37 + r.random()), 120 + 80 * np.cos(y / 23), 170 + 50 * np.sin((x + y) / 51)],
                   axis=2)
    return img.clip(0, 255).astype(np.uint8)


def write_tiff(path, image, **kw):
    kw.setdefault("tile", (128, 128))
    kw.setdefault("compression", "zlib")
    tifffile.imwrite(path, image, **kw)
    return path


@pytest.mark.parametrize("kw", [dict(), dict(tile=None, rowsperstrip=37), dict(tile=None, compression=None)])
def test_regions_read_equal_the_image(tmp_path, kw):
    image = rgb(300, 410, seed=1)
    path = write_tiff(tmp_path / "s.tif", image, **kw)
    with TiffSlide(path) as s:
        assert (s.height, s.width) == (300, 410)
        for y0, y1, x0, x1 in [(0, 300, 0, 410), (5, 131, 127, 129), (299, 300, 0, 1), (128, 256, 256, 410)]:
            np.testing.assert_array_equal(s.read(y0, y1, x0, x1), image[y0:y1, x0:x1])
        with pytest.raises(InputError, match="outside"):
            s.read(0, 301, 0, 10)


def test_gray_and_16_bit_slides(tmp_path):
    gray = rgb(100, 120, seed=2)[:, :, 0]
    with TiffSlide(write_tiff(tmp_path / "g.tif", gray)) as s:
        np.testing.assert_array_equal(s.read(0, 100, 0, 120), np.repeat(gray[:, :, None], 3, axis=2))
    deep = gray.astype(np.uint16) * 257
    with TiffSlide(write_tiff(tmp_path / "d.tif", deep)) as s:
        np.testing.assert_array_equal(s.read(10, 20, 30, 40)[:, :, 0], gray[10:20, 30:40])


def test_mask_tiff_and_preview_equal_the_in_memory_result(tmp_path):
    seg = pointwise(size=32)
    image = smooth(500, 700)
    path = write_tiff(tmp_path / "slide.tif", image, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    info = segment_slide(seg, path, tmp_path / "slide_mask.tif", tmp_path / "slide_preview.png",
                         TileOptions(overlap=0.25, batch=5))
    want = predict_array(seg, image, TileOptions(overlap=0.25))
    with tifffile.TiffFile(tmp_path / "slide_mask.tif") as t:
        page = t.pages[0]
        assert page.is_tiled and page.compression == 8 and (page.tilelength, page.tilewidth) == (256, 256)
        np.testing.assert_array_equal(page.asarray(), want * 255)
    assert info["microns_per_pixel"] == pytest.approx(0.25) and info["tiles_run"] == info["windows"] > 0
    preview = cv2.imread(str(tmp_path / "slide_preview.png"))[:, :, ::-1]
    assert preview.shape == (500, 700, 3)  # below the preview's side limit: full size
    fg = want == 1
    assert fg.any() and (~fg).any()
    assert preview[fg][:, 0].mean() > image[fg][:, 0].mean()  # foreground tinted towards red
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tif", "slide_mask.tif", "slide_preview.png"]


def test_preview_downscales_by_block_means():
    image = np.zeros((10, 7, 3), np.uint8)
    image[:, :, 1] = 200
    mask = np.zeros((10, 7), np.uint8)
    mask[:4] = 1
    pv = Preview(10, 7, [(0, 0, 0), (255, 0, 0)], side=4)  # factor 3
    for y in range(0, 10, 4):  # chunks that do not align with the blocks
        pv.add(image[y:y + 4], mask[y:y + 4])
    out = pv.image()
    assert pv.factor == 3 and out.shape == (4, 3, 3)
    assert out[0, 0, 0] > 100 and out[2, 0, 0] == 0 and out[2, 0, 1] == 200
    png = png_bytes(out)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], out)


def _corrupt_one_tile(path, index):
    with tifffile.TiffFile(path) as t:
        off, count = t.pages[0].dataoffsets[index], t.pages[0].databytecounts[index]
    data = bytearray(path.read_bytes())
    data[off + 2:off + count] = b"\x00" * (count - 2)
    path.write_bytes(bytes(data))


def test_corrupt_tile_one_line_nothing_written(tmp_path):
    path = write_tiff(tmp_path / "slide.tif", rgb(300, 400, seed=3))
    _corrupt_one_tile(path, 5)  # tile grid 3 x 4: row 1, column 1
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"slide.tif: tile 5 \(row 1, column 1; pixels y 128-256, x 128-256\)"):
        segment_slide(pointwise(32), path, out / "slide_mask.tif", out / "slide_preview.png")
    assert list(out.iterdir()) == []


def test_writer_refuses_a_short_stream_and_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match="ended at row 10 of 20"):
        write_mask_tiff(tmp_path / "m.tif", 20, 30, iter([(0, np.zeros((10, 30), np.uint8))]))
    assert list(tmp_path.iterdir()) == []


def _slide_peak(seg, path) -> int:
    tracemalloc.start()
    segment_slide(seg, path, path.with_name(path.stem + "_mask.tif"), None, TileOptions(batch=8))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow  # an end-to-end run: in the full suite, not the fast subset
def test_slide_memory_is_flat_as_the_slide_grows(tmp_path):
    """Without the preview, which is bounded on its own (longest side PREVIEW_SIDE)."""
    seg = pointwise(size=128)
    small = write_tiff(tmp_path / "small.tif", smooth(600, 2000))
    large = write_tiff(tmp_path / "large.tif", smooth(2400, 2000))  # 4x the pixels
    p_small, p_large = _slide_peak(seg, small), _slide_peak(seg, large)
    assert p_large < 1.3 * p_small, (p_small, p_large)
    assert p_large < 2400 * 2000 * 3  # less than the slide's own pixels, let alone its probabilities


def test_slide_rule(tmp_path):
    assert not is_slide(write_tiff(tmp_path / "small.tif", rgb(50, 60)))
    assert is_slide(tmp_path / "small.tif", force=True)
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, shape=(10_500, 10_000, 3), dtype=np.uint8)  # 105 MP, never decoded here
    assert is_slide(big)
    assert not is_slide(tmp_path / "missing.tif") and not is_slide(tmp_path / "x.png")


def test_predict_cli_on_a_slide(tiny_bundle, tmp_path):
    image = smooth(230, 310, seed=4)
    path = write_tiff(tmp_path / "in" / "slide.tif", image) if (tmp_path / "in").mkdir() is None else None
    r = cli("predict", tiny_bundle, path, "-o", tmp_path / "out", "--tiled", "--tile-overlap", "0.5",
            "--tile-batch", "3", "-q")
    worked(r)
    assert "slide slide: 310x230" in r.stdout
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [".edgeseg-output.json", "slide_mask.tif", "slide_preview.png", "slide_slide.json"]
    want = Segmenter(tiny_bundle).predict_tiled(image, overlap=0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out/slide_mask.tif"), want * 255)


def test_predict_cli_corrupt_tile(tiny_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    path = write_tiff(tmp_path / "in" / "slide.tif", rgb(200, 300, seed=5))
    _corrupt_one_tile(path, 2)
    refused(cli("predict", tiny_bundle, path, "-o", tmp_path / "out", "--tiled", "-q"), "tile 2 (row 0, column 2")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


@pytest.mark.parametrize("args", [["--tile-overlap", "0.95"], ["--tile-batch", "0"], ["--tile-scale", "nan"],
                                  ["--tile-mpp", "0"], ["--tile-mpp", "inf"]])
def test_predict_cli_bad_tile_options(tiny_bundle, tmp_path, args):
    path = write_tiff(tmp_path / "slide.tif", rgb(50, 60))
    refused(cli("predict", tiny_bundle, path, "-o", tmp_path / "out", *args), "tile")
    assert not (tmp_path / "out").exists()


def test_bench_on_a_slide(tiny_bundle, tmp_path):
    import json

    path = write_tiff(tmp_path / "slide.tif", smooth(200, 260, seed=6))
    r = cli("bench", tiny_bundle, "--data", path, "--json", tmp_path / "b.json", "-q")
    worked(r)
    assert "windows/s" in r.stdout and "slide slide.tif: 260x200" in r.stdout
    res = json.loads((tmp_path / "b.json").read_text())
    row = res["rows"][0]
    assert row["windows"] == row["tiles_run"] > 0 and row["end_to_end_s"] >= row["slide_s"] > 0
    assert row["windows_per_s"] > 0 and res["slide"]["window"] == [64, 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "slide.tif"]  # the mask went with its temp folder


def test_mask_writer_streams_a_large_mask(tmp_path):
    """Tiles go to the file as they come: tifffile's default would hold up to 512 MB of them."""
    h = w = 8000

    def chunks():
        for y in range(0, h, 500):
            yield y, np.full((500, w), 255 * (y // 500 % 2), np.uint8)

    tracemalloc.start()
    write_mask_tiff(tmp_path / "m.tif", h, w, chunks())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 24e6, peak  # the mask itself is 64 MB
    with tifffile.TiffFile(tmp_path / "m.tif") as t:
        assert t.pages[0].asarray()[::500, 0].tolist() == [0, 255] * 8


@pytest.mark.slow  # about 60 s here: 1,700 windows read and checked for tissue, a 105 MP mask written
def test_predict_cli_routes_a_105_mp_tiff_by_its_size(tiny_bundle, tmp_path):
    """No --tiled: over 100 MP is a slide. Glass only, so every window is skipped (fast)."""
    big = tmp_path / "in" / "big.tif"
    big.parent.mkdir()
    glass = np.full((512, 10_000, 3), 242, np.uint8)
    with tifffile.TiffWriter(big) as w:  # written band by band: never 315 MB in memory
        w.write((glass[:, x:x + 512] if x + 512 <= 10_000 else np.pad(glass[:, x:], ((0, 0), (0, x + 512 - 10_000),
                                                                                   (0, 0)))
                 for _ in range(0, 10_500, 512) for x in range(0, 10_000, 512)),
                shape=(10_500, 10_000, 3), dtype=np.uint8, tile=(512, 512), compression="zlib", photometric="rgb")
    tracemalloc.start()
    r = cli("predict", tiny_bundle, big, "-o", tmp_path / "out", "--skip-background", "--tile-scale", "0.25", "-q")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    worked(r)
    assert "slide big: 10000x10500" in r.stdout
    info = __import__("json").loads((tmp_path / "out/big_slide.json").read_text())
    assert info["tiles_skipped"] == info["windows"] > 1000 and info["window"] == [256, 256]
    with tifffile.TiffFile(tmp_path / "out/big_mask.tif") as t:
        assert t.pages[0].shape == (10_500, 10_000) and t.pages[0].is_tiled
    assert peak < 150e6, peak  # the slide's pixels alone are 315 MB, its probabilities 840 MB


def test_predict_cli_refuses_probs_for_a_slide(tiny_bundle, tmp_path):
    path = write_tiff(tmp_path / "slide.tif", rgb(60, 80))
    refused(cli("predict", tiny_bundle, path, "-o", tmp_path / "out", "--tiled", "--probs", "-q"),
            "slide.tif is a slide", "--probs")
    assert not (tmp_path / "out").exists()


def test_scale_from_microns_per_pixel(tmp_path):
    seg = pointwise(size=32)
    image = smooth(150, 170)
    path = write_tiff(tmp_path / "s.tif", image, resolution=(40000, 40000), resolutionunit="CENTIMETER")  # 0.25 um/px
    info = segment_slide(seg, path, tmp_path / "s_mask.tif", None, model_mpp=0.5)
    assert info["scale"] == 0.5 and info["window"] == [64, 64]
    bare = write_tiff(tmp_path / "bare.tif", image)
    with pytest.raises(InputError, match="records no resolution"):
        segment_slide(seg, bare, tmp_path / "bare_mask.tif", None, model_mpp=0.5)
    assert not (tmp_path / "bare_mask.tif").exists()


def test_pyramidal_tiff_reads_its_full_resolution_level(tmp_path):
    image = rgb(256, 384, seed=8)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(image, tile=(128, 128), compression="zlib", subifds=1)
        w.write(image[::2, ::2].copy(), tile=(128, 128), compression="zlib", subfiletype=1)
    with TiffSlide(path) as s:
        assert s.levels == 2 and (s.height, s.width) == (256, 384)
        np.testing.assert_array_equal(s.read(100, 200, 50, 300), image[100:200, 50:300])


def test_truncated_and_fake_tiffs_one_line(tmp_path):
    path = write_tiff(tmp_path / "cut.tif", rgb(300, 400, seed=9), compression=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the directory comes first: the last tiles are gone
    with pytest.raises(InputError, match=r"cut.tif: tile 7 \(row 1, column 3; .* bytes present \(truncated file\?\)"):
        segment_slide(pointwise(32), path, tmp_path / "cut_mask.tif")
    (tmp_path / "fake.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="not a readable TIFF"):
        segment_slide(pointwise(32), tmp_path / "fake.tif", tmp_path / "fake_mask.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif", "fake.tif"]
