"""Whole slides on real H&E: a mosaic of MoNuSeg tiles predicted by `edgeseg predict`, tile by tile.

Builds two slides from the 30 real MoNuSeg 1000 x 1000 tiles (../shared/data/monuseg-train,
40x, written here as 0.25 um/px): N x N mosaic positions, tissue on 2 of every 3 rows and columns of
positions (islands of 2 x 2 tiles, each tile one of the 30 in one of its 8 rotations/flips),
glass (near-white, unsaturated, with noise) elsewhere. They are written as tiled, deflate TIFFs
into a temporary folder (``--work``; never into the repository), with their ground-truth masks
kept as tile references. Then, each in its own subprocess (peak RSS measured by a parent that
only waits), ``edgeseg predict BUNDLE slide.tif -o OUT --tile-scale 0.512 --skip-background``:

(a) equality: on the small slide with overlap 0.5 (stride 250 px, which divides the tile size,
    so the windows over a tile's centre are the same in the mosaic and alone), every tissue tile
    is also predicted alone by ``Segmenter.predict_tiled`` with the same options; the masks are
    compared in each tile's centre (250 px from its edges) and over the whole tile;
(b) seams: pooled Dice against the ground truth in strips (8 px) along the windows' edges (away
    from mosaic seams), along mosaic seams between two tissue tiles, and inside (>= 32 px from
    both); the window seams must be within 0.01 of inside;
(c) memory: peak RSS at the default overlap 0.25 for the small slide and one with 4x the pixels
    (the large one is over 100 MP, so predict takes it as a slide by its own rule; the small one
    needs ``--tiled``), against the size of the slide's probabilities (C x H x W float32);
(d) throughput: windows per second (run and skipped), slide megapixels per second, end-to-end
    seconds per slide (process start to exit, model load included).

The model (say which in the result): ``--bundle``, by default runs/slide_monuseg_b0_bundle, made by
``--make-data DIR`` (500 x 500 crops of monuseg-train, 4 per image, train/val splits kept), then
``edgeseg train DIR -o runs/slide_monuseg_b0 --variant b0 --init ../shared/models/kvasir-b0-warmstart
--size 256 --epochs 12 --warmup-steps 20 --time-budget 15`` and ``edgeseg export runs/slide_monuseg_b0
-o runs/slide_monuseg_b0_bundle --data DIR --split val``: it sees 500 px of slide as 256 px, hence
``--tile-scale 0.512``. 24 of the 30 tiles were its training images: Dice here is optimistic in
absolute terms; (b) compares regions of the same tiles.

Usage: python benchmarks/slide_mosaic.py [--bundle B] [--small 8] [--large 16] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SHARED, save  # noqa: E402

MONUSEG = SHARED / "monuseg-train"
TILE = 1000
SCALE = 0.512  # the model's 256 px input covers 500 px of slide
MPP = 0.25
STRIP, INSIDE = 8, 32


def source_tiles() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from edgeseg.data import folders as D

    names = sorted(p.stem for p in (MONUSEG / "images").glob("*.tif"))
    return [(n, D.read_image(MONUSEG / "images" / f"{n}.tif"), D.read_mask(MONUSEG / "masks" / f"{n}.png"))
            for n in names]


def tissue(i: int, j: int) -> bool:
    return i % 3 < 2 and j % 3 < 2


def tile_at(tiles, n: int, i: int, j: int):
    """(image, mask) of mosaic position (i, j), or None for glass."""
    if not tissue(i, j):
        return None
    k = sum(tissue(a, b) for a in range(n) for b in range(n) if (a, b) < (i, j))
    _, img, mask = tiles[k % len(tiles)]
    t = (k // len(tiles) + k) % 8
    f = (lambda a: a[:, ::-1]) if t >= 4 else (lambda a: a)
    return np.ascontiguousarray(np.rot90(f(img), t % 4)), np.ascontiguousarray(np.rot90(f(mask), t % 4))


def glass(h: int, w: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    base = np.array([240, 236, 241], np.int16)
    return (base + r.integers(-5, 6, (h, w, 3), dtype=np.int16)).clip(0, 255).astype(np.uint8)


def write_mosaic(path: Path, tiles, n: int, tile: int = 512) -> None:
    """The slide, written as 512 x 512 deflate tiles from one row of mosaic positions at a time."""
    import tifffile

    width = n * TILE
    gw = -(-width // tile)

    def tiles_gen():
        buf = np.zeros((tile, gw * tile, 3), np.uint8)
        filled = 0
        for i in range(n):
            band = np.concatenate([t[0] if (t := tile_at(tiles, n, i, j)) is not None else glass(TILE, TILE, i * n + j)
                                   for j in range(n)], axis=1)
            r = 0
            while r < TILE:
                k = min(tile - filled, TILE - r)
                buf[filled:filled + k, :width] = band[r:r + k]
                filled, r = filled + k, r + k
                if filled == tile:
                    yield from (buf[:, x:x + tile].copy() for x in range(0, gw * tile, tile))
                    filled = 0
        if filled:
            buf[filled:] = 0
            yield from (buf[:, x:x + tile].copy() for x in range(0, gw * tile, tile))

    with tifffile.TiffWriter(path, bigtiff=True) as w:
        w.write(tiles_gen(), shape=(width, width, 3), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                compressionargs={"level": 1}, photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP),
                resolutionunit="CENTIMETER", metadata=None)


def run_predict(bundle: Path, slide: Path, out: Path, *extra: str) -> dict:
    """`edgeseg predict` in a subprocess of a parent that only waits: its peak RSS is the CLI's."""
    exe = Path(sys.executable).with_name("edgeseg")
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
               "print('WALL', time.perf_counter() - t, 'PEAK_KB', "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    cmd = [str(exe), "predict", str(bundle), str(slide), "-o", str(out), "--tile-scale", str(SCALE),
           "--skip-background", "--tile-batch", "4", "--threads", "2", "--json", "-q", "--overwrite", *extra]
    load0 = os.getloadavg()
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"predict failed on {slide.name}: {r.stderr.strip()[-2000:]}")
    tail = r.stderr.rsplit("WALL", 1)[1].split()
    info = json.loads((out / f"{slide.stem}_slide.json").read_text())
    h, w = info["height"], info["width"]
    return {"command": " ".join(["edgeseg", *cmd[1:]]), "wall_s": round(float(tail[0]), 2),
            "peak_rss_mb": round(int(tail[2]) / 1024 * 1.048576, 1),
            "probabilities_mb": round(2 * h * w * 4 / 1e6, 1), "slide_rgb_mb": round(h * w * 3 / 1e6, 1),
            "megapixels": round(h * w / 1e6, 1), "slide": info,
            "windows_per_s_total": round(info["windows"] / info["seconds"], 2),
            "windows_per_s_run": round(info["tiles_run"] / info["seconds"], 2),
            "megapixels_per_s": round(h * w / 1e6 / info["seconds"], 3),
            "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def _dice(pred: np.ndarray, gt: np.ndarray) -> float | None:
    s = int(pred.sum()) + int(gt.sum())
    return None if s == 0 else round(2 * int((pred & gt).sum()) / s, 4)


def _edge_distance(n: int, edges) -> np.ndarray:
    e = np.asarray(sorted(set(edges)))
    idx = np.arange(n)
    return np.abs(idx[:, None] - e[None, :]).min(axis=1)


def accuracy(bundle: Path, tiles, n: int, mask_path: Path, overlap: float) -> dict:
    import tifffile

    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.tiled import TiledPredictor, TileOptions

    seg = Segmenter(bundle, threads=2)
    mosaic = tifffile.imread(mask_path) > 127
    size = n * TILE
    opt = dict(overlap=overlap, scale=SCALE, batch=4, skip_background=True)
    centre = slice(TILE // 4, TILE * 3 // 4)
    eq = {"tiles": 0, "centre_pixels": 0, "centre_mismatches": 0, "tile_pixels": 0, "tile_mismatches": 0}
    gt = np.zeros((size, size), bool)
    on = np.zeros((size, size), bool)  # tissue tiles
    alone_all = np.zeros((size, size), bool)  # each tile predicted alone, placed at its position
    for i in range(n):
        for j in range(n):
            t = tile_at(tiles, n, i, j)
            if t is None:
                continue
            sl = (slice(i * TILE, (i + 1) * TILE), slice(j * TILE, (j + 1) * TILE))
            gt[sl], on[sl] = t[1] > 0, True
            alone = seg.predict_tiled(t[0], **opt) > 0
            alone_all[sl] = alone
            got = mosaic[sl]
            eq["tiles"] += 1
            eq["centre_pixels"] += alone[centre, centre].size
            eq["centre_mismatches"] += int((alone[centre, centre] != got[centre, centre]).sum())
            eq["tile_pixels"] += alone.size
            eq["tile_mismatches"] += int((alone != got).sum())
    eq["centre_equal"] = eq["centre_mismatches"] == 0
    eq["tile_agreement"] = round(1 - eq["tile_mismatches"] / eq["tile_pixels"], 5)
    tp = TiledPredictor(seg, size, size, None, TileOptions(**opt))
    wedges = [e for s in tp.ys for e in (s, s + tp.window[0])]
    d_win = _edge_distance(size, wedges)
    d_mos = _edge_distance(size, range(0, size + 1, TILE))
    # a mosaic seam strip: within STRIP px of a boundary between two tissue tiles
    seam_mos = np.zeros((size, size), bool)
    for i in range(n):
        for j in range(n):
            if tissue(i, j) and i + 1 < n and tissue(i + 1, j):
                y = (i + 1) * TILE
                seam_mos[y - STRIP:y + STRIP, j * TILE:(j + 1) * TILE] = True
            if tissue(i, j) and j + 1 < n and tissue(i, j + 1):
                x = (j + 1) * TILE
                seam_mos[i * TILE:(i + 1) * TILE, x - STRIP:x + STRIP] = True
    far_mos = (d_mos >= INSIDE)[:, None] & (d_mos >= INSIDE)[None, :]
    seam_win = ((d_win < STRIP)[:, None] | (d_win < STRIP)[None, :]) & far_mos & on
    inside = (d_win >= INSIDE)[:, None] & (d_win >= INSIDE)[None, :] & far_mos & on
    regions = {"inside": inside, "window_seams": seam_win, "mosaic_seams": seam_mos & on, "all_tissue": on}
    dice = {k: _dice(mosaic[m], gt[m]) for k, m in regions.items()}
    # the same strips predicted tile by tile alone: what the data give there without any neighbour
    dice_alone = {k: _dice(alone_all[m], gt[m]) for k, m in regions.items()}
    gt_fg = {k: round(float(gt[m].mean()), 4) for k, m in regions.items()}
    pixels = {k: int(m.sum()) for k, m in regions.items()}
    return {"equality": eq, "dice": dice, "dice_tiles_alone": dice_alone, "gt_foreground_fraction": gt_fg,
            "pixels": pixels, "strip_px": STRIP, "inside_px": INSIDE,
            "window_seam_gap": round(abs(dice["window_seams"] - dice["inside"]), 4),
            "window_seams_within_0.01": abs(dice["window_seams"] - dice["inside"]) <= 0.01,
            "mosaic_seam_gap": round(abs(dice["mosaic_seams"] - dice["inside"]), 4)}


def make_data(dst: Path) -> None:
    """500 x 500 crops (4 per MoNuSeg image) with the dataset's train/val splits, masks 0/255."""
    import cv2

    for sub in ("images", "masks", "splits"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    tiles = {n: (img, m) for n, img, m in source_tiles()}
    for split in ("train", "val"):
        names = [x.strip() for x in (MONUSEG / "splits" / f"{split}.txt").read_text().split() if x.strip()]
        out = []
        for name in names:
            img, m = tiles[name]
            for a in range(2):
                for b in range(2):
                    c = f"{name}_{a}{b}"
                    sl = (slice(a * 500, (a + 1) * 500), slice(b * 500, (b + 1) * 500))
                    cv2.imwrite(str(dst / "images" / f"{c}.png"), img[sl][:, :, ::-1])
                    cv2.imwrite(str(dst / "masks" / f"{c}.png"), m[sl] * 255)
                    out.append(c)
        (dst / "splits" / f"{split}.txt").write_text("\n".join(out) + "\n")


def markdown(res: dict) -> str:
    a, runs = res["accuracy"], res["memory"]
    lines = [f"# Whole-slide tiled prediction on a MoNuSeg mosaic ({res['created']})", "",
             f"Model: {res['model']}. Slides: {res['layout']}", "",
             f"Machine: {res['machine'].get('cpu', {}).get('model', '?')}, {os.cpu_count()} cores; load average "
             f"at start {res['loadavg_start']}, at end {res['loadavg_end']} (shared machine).", "",
             "## (a) Tiled mosaic vs each tile predicted alone (overlap 0.5)", "",
             f"{a['equality']['tiles']} tissue tiles: {a['equality']['centre_mismatches']} differing pixels of "
             f"{a['equality']['centre_pixels']} in the tiles' centres (equal: {a['equality']['centre_equal']}); "
             f"over whole tiles, seams included, agreement {a['equality']['tile_agreement']}.", "",
             "## (b) Dice against the ground truth by region (overlap 0.5, Gaussian blending)", "",
             "| region | pixels | Dice (mosaic, tiled) | Dice (each tile alone) | ground-truth foreground |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {a['pixels'][k]} | {a['dice'][k]} | {a['dice_tiles_alone'][k]} | "
              f"{a['gt_foreground_fraction'][k]} |" for k in a["dice"]]
    lines += ["", f"Window seams vs inside: gap {a['window_seam_gap']} (within 0.01: "
              f"{a['window_seams_within_0.01']}); mosaic seams (two unrelated tissues meet) vs inside: gap "
              f"{a['mosaic_seam_gap']}; the same strips predicted tile by tile alone score "
              f"{a['dice_tiles_alone']['mosaic_seams']} (ground-truth foreground there: "
              f"{a['gt_foreground_fraction']['mosaic_seams']}, inside: {a['gt_foreground_fraction']['inside']}).", "",
              "## (c, d) Memory and throughput (`edgeseg predict`, one subprocess per slide)", "",
              "| slide | MP | overlap | windows (run / skipped) | end-to-end s | windows/s | MP/s | peak RSS MB | "
              "probabilities MB |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for k, r in runs.items():
        s = r["slide"]
        lines.append(f"| {k} ({s['width']}x{s['height']}) | {r['megapixels']} | {s['overlap']} | {s['tiles_run']} / "
                     f"{s['tiles_skipped']} | {r['wall_s']} | {r['windows_per_s_total']} | {r['megapixels_per_s']} | "
                     f"{r['peak_rss_mb']} | {r['probabilities_mb']} |")
    lines += ["", f"Peak RSS ratio large/small: {res['peak_rss_ratio']} for {res['pixel_ratio']}x the pixels.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "slide_monuseg_b0_bundle")
    ap.add_argument("--small", type=int, default=8, help="mosaic positions per side of the small slide")
    ap.add_argument("--large", type=int, default=16, help="... of the large one (2x: 4x the pixels)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeseg_slide_mosaic")
    ap.add_argument("--make-data", type=Path, help="write the 500 px crop dataset for training here and exit")
    args = ap.parse_args()
    if args.make_data:
        make_data(args.make_data)
        return
    if not MONUSEG.is_dir():
        raise SystemExit(f"needs the real MoNuSeg tiles at {MONUSEG}")
    load_start = [round(x, 2) for x in os.getloadavg()]
    args.work.mkdir(parents=True, exist_ok=True)
    tiles = source_tiles()
    slides = {}
    for key, n in (("small", args.small), ("large", args.large)):
        slides[key] = args.work / f"mosaic_{n}x{n}.tif"
        if not slides[key].is_file():
            t = time.perf_counter()
            write_mosaic(slides[key], tiles, n)
            print(f"wrote {slides[key]} ({n * TILE}x{n * TILE}) in {time.perf_counter() - t:.0f} s", flush=True)
    acc_run = run_predict(args.bundle, slides["small"], args.work / "out_small_ov50", "--tiled", "--tile-overlap", "0.5")
    print("small, overlap 0.5:", acc_run["wall_s"], "s", acc_run["peak_rss_mb"], "MB", flush=True)
    acc = accuracy(args.bundle, tiles, args.small, args.work / "out_small_ov50" / f"{slides['small'].stem}_mask.tif",
                   0.5)
    print(json.dumps(acc), flush=True)
    memory = {}
    for key in ("small", "large"):
        extra = ["--tiled"] if key == "small" else []  # the large slide is over 100 MP: a slide by predict's rule
        memory[key] = run_predict(args.bundle, slides[key], args.work / f"out_{key}", *extra)
        print(key, memory[key]["wall_s"], "s", memory[key]["peak_rss_mb"], "MB", flush=True)
    res = {"model": f"{args.bundle.name}: SegFormer-B0 fine-tuned from the Kvasir warm start on 500 px crops of "
                    f"monuseg-train (recipe in benchmarks/slide_mosaic.py), 256 px input, --tile-scale {SCALE}",
           "layout": f"{args.small}x{args.small} and {args.large}x{args.large} positions of {TILE} px, tissue on 2 of "
                     "every 3 rows/columns (MoNuSeg tiles in 8 orientations), glass elsewhere; tiled deflate TIFFs, "
                     f"{MPP} um/px; --skip-background, --tile-batch 4, --threads 2",
           "accuracy_run": acc_run, "accuracy": acc, "memory": memory,
           "peak_rss_ratio": round(memory["large"]["peak_rss_mb"] / memory["small"]["peak_rss_mb"], 3),
           "pixel_ratio": round(memory["large"]["megapixels"] / memory["small"]["megapixels"], 2),
           "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    path = save("slide_mosaic", res)
    res = json.loads(path.read_text())
    (RESULTS / "slide_mosaic.md").write_text(markdown(res))
    print(f"wrote {path} and {RESULTS / 'slide_mosaic.md'}")


if __name__ == "__main__":
    main()
