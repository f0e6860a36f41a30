"""A real `edgeseg serve` process on a free localhost port, talked to with a real HTTP client
(httpx); then `edgeseg monitor` on the log it wrote."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import rgb
from test_serve_helpers import png, two_version_store

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, port, timeout=120):
    exe = Path(sys.executable).with_name("edgeseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeseg"]
    proc = subprocess.Popen(cmd + ["serve", *map(str, args), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not become ready")


@pytest.mark.slow
def test_real_server_process_and_monitor(tiny_bundle, tmp_path):
    from edgeseg.runtime import Segmenter
    from edgeseg.serve.encode import rle_decode

    store, _ = two_version_store(tiny_bundle, tmp_path)
    port, log = free_port(), tmp_path / "log"
    proc = start([store, "--log", log, "--token", "t0k"], port)
    try:
        base = f"http://127.0.0.1:{port}"
        image = rgb(48, 64, seed=5)
        want = Segmenter(store / "versions" / "v1").predict(image)
        with httpx.Client(base_url=base, timeout=60) as c:
            ids = []
            for _ in range(3):
                r = c.post("/v1/segment", content=png(image), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                np.testing.assert_array_equal(rle_decode(r.json()["mask"]), want)
                ids.append(r.json()["request_id"])
            assert c.post("/v1/models/v2/activate").status_code == 401
            assert c.post("/v1/models/v2/activate", headers={"authorization": "Bearer t0k"}).json()["active"] == "v2"
            r = c.post("/v1/segment", content=png(image), headers={"content-type": "image/png"})
            assert r.json()["model"]["version"] == "v2"
            ids.append(r.json()["request_id"])
            for rid, truth in zip(ids, (want, want, 1 - want, want)):
                f = c.post("/v1/feedback", params={"request_id": rid}, content=png(truth * 255),
                           headers={"content-type": "image/png"})
                assert f.status_code == 200, f.text
            assert c.post("/v1/segment", content=b"junk", headers={"content-type": "image/png"}).status_code == 415
            assert "edgeseg_requests_total" in c.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    err = proc.stderr.read()
    assert "Traceback" not in err, err

    from conftest import run_cli

    r = run_cli("monitor", log, "-o", tmp_path / "mon")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["requests"] == 4 and s["refused"] == 1 and s["feedback"] == 4
    assert s["live_dice"]["v1"]["feedback"] == 3 and s["live_dice"]["v2"]["dice_mean"] == pytest.approx(1.0)
    assert s["live_dice"]["v1"]["dice_mean"] < 1.0
    assert s["latency_ms"]["p50"] > 0 and s["latency_ms"]["count"] == 4
    assert (tmp_path / "mon" / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "live Dice" in (tmp_path / "mon" / "summary.md").read_text()


@pytest.mark.parametrize("args, words", [(["--port", "0"], "--port"), (["--port", "http"], "--port"),
                                         (["/nonexistent/store"], "neither a model store")])
def test_serve_cli_refuses_bad_arguments(args, words):
    from typer.testing import CliRunner

    from edgeseg.cli import app

    r = CliRunner().invoke(app, ["serve", *args])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
