import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "calibration_data"
# real data (Kvasir-SEG, BUSI, MoNuSeg folders): $EDGESEG_DATA, else ../shared/data beside the clone
SHARED_DATA = Path(os.environ.get("EDGESEG_DATA") or ROOT.parent / "shared" / "data")

os.environ.setdefault("OMP_NUM_THREADS", "2")
pytest.register_assert_rewrite("badinput")  # the bad-input catalogue's shared helpers


def write_img(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    buf.tofile(str(path))
    return path


@pytest.fixture(scope="session")
def embedded() -> Path:
    return EMBEDDED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (set EDGESEG_DATA to the folder holding kvasir-seg/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny SegFormer trained for two short epochs on the embedded set (64 px)."""
    from edgeseg.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(TrainConfig(data=str(EMBEDDED), out=str(out), variant="tiny", size=64, epochs=2, batch_size=8,
                      warmup_steps=2, lr=2e-3, progress=False, threads=2))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory) -> Path:
    from edgeseg.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny_bundle"
    export_bundle(tiny_ckpt, out, limit=4)
    return out


def rgb(h=40, w=56, seed=0) -> np.ndarray:
    """A random HxWx3 uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask01(h=40, w=56, value=255) -> np.ndarray:
    """A rectangle of ``value`` on zeros, the size of :func:`rgb`'s default image."""
    m = np.zeros((h, w), np.uint8)
    m[h // 4:h * 5 // 8, w // 5:w * 5 // 7] = value
    return m


def one_line_error(r, contains: str) -> str:
    """A finished CLI subprocess that failed with exactly one ``error:`` line containing CONTAINS."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, r.stderr
    assert contains.lower() in err[0].lower(), r.stderr
    return err[0]


def run_cli(*args, env=None, cwd=None):
    """Run the installed CLI in a subprocess: the way users run it."""
    exe = Path(sys.executable).with_name("edgeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeseg"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def pytest_collection_modifyitems(config, items):
    """Markers from what a test needs: `data` for tests using the real data; `cuda` and `jetson`
    tests skip with the reason when the hardware is absent (`pytest -ra` lists them)."""
    cuda = jetson = None
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
        if item.get_closest_marker("cuda") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU visible to torch (none here)"))
        if item.get_closest_marker("jetson") is not None:
            if jetson is None:
                jetson = Path("/etc/nv_tegra_release").is_file()
            if not jetson:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA Jetson (/etc/nv_tegra_release absent)"))


def blocking_imports(*modules: str) -> str:
    """Python source that makes importing any of ``modules`` (top-level names) raise ImportError:
    the preamble of a subprocess that shows some code runs where they cannot be imported."""
    return ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            f"    if name.split('.')[0] in {modules!r}:\n"
            "        raise ImportError('blocked: ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n")
