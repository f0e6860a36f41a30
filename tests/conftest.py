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
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
        pytest.skip(f"real data not present at {SHARED_DATA}")
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


def run_cli(*args, env=None, cwd=None):
    """Run the installed CLI in a subprocess: the way users run it."""
    exe = Path(sys.executable).with_name("edgeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeseg.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
