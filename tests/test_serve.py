"""The service end to end with FastAPI's TestClient: every endpoint, every bad request (a 4xx
with one JSON line, never a 500 or a traceback), feedback, metrics, admin tokens, and a version
switch under concurrent requests that loses nothing."""

import json
import threading

import numpy as np
import pytest
from conftest import rgb
from test_serve_helpers import encoded, parse_prometheus, png, two_version_store

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def store(tiny_bundle, tmp_path_factory):
    return two_version_store(tiny_bundle, tmp_path_factory.mktemp("serve"))[0]


@pytest.fixture()
def client(store, tmp_path):
    from fastapi.testclient import TestClient

    from edgeseg.serve.app import create_app
    from edgeseg.serve.store import ModelStore

    ModelStore(store).activate("v1")
    app = create_app(store, log_dir=tmp_path / "log", max_pixels=200_000, max_body_bytes=2_000_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.log_dir = tmp_path / "log"
        yield c


@pytest.fixture(scope="module")
def seg(store):
    from edgeseg.runtime import Segmenter

    return Segmenter(store / "versions" / "v1")


IMAGE = rgb(60, 80, seed=3)


def post_image(client, body, ctype="image/png", accept=None, **params):
    headers = {"content-type": ctype}
    if accept:
        headers["accept"] = accept
    return client.post("/v1/segment", content=body, headers=headers, params=params)


def test_health_and_models(client, store, seg):
    from edgeseg.serve.store import bundle_sha256

    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ready", "version": "v1",
                                                 "sha256": bundle_sha256(store / "versions" / "v1")}
    m = client.get("/v1/models").json()
    assert m["active"] == "v1" and [v["version"] for v in m["versions"]] == ["v1", "v2"]
    assert m["serving"]["classes"] == seg.classes and m["serving"]["version"] == "v1"
    assert m["audit"] and m["audit"][-1]["to"] == "v1"
    assert client.get("/docs").status_code == 200 and "/v1/segment" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("fmt, ctype", [("PNG", "image/png"), ("TIFF", "image/tiff")])
def test_segment_json_matches_the_segmenter(client, seg, fmt, ctype):
    from edgeseg.serve.encode import rle_decode

    r = post_image(client, encoded(IMAGE, fmt), ctype)
    assert r.status_code == 200, r.text
    a = r.json()
    mask = rle_decode(a["mask"])
    np.testing.assert_array_equal(mask, seg.predict(IMAGE))
    assert a["model"]["version"] == "v1" and len(a["model"]["sha256"]) == 64
    assert a["size"] == [60, 80] and sum(a["areas"].values()) == 60 * 80
    assert a["areas"][seg.classes[1]] == int((mask == 1).sum())
    assert set(a["drift"]) >= {"score", "drifted"} and isinstance(a["drift"]["drifted"], bool)
    assert a["latency_ms"] > 0 and 0.5 <= a["mean_confidence"] <= 1.0


def test_segment_jpeg_multipart_and_png_answer(client, seg):
    import io

    from PIL import Image

    jpg = encoded(IMAGE, "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    r = client.post("/v1/segment", files={"image": ("x.jpg", jpg, "image/jpeg")}, headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (60, 80)
    np.testing.assert_array_equal(mask, seg.predict(decoded))
    for h in ("model-version", "bundle-sha256", "latency-ms", "drift-score", "drift-flag", "request-id"):
        assert r.headers[f"x-edgeseg-{h}"], h
    assert r.headers["x-edgeseg-model-version"] == "v1"


def test_probabilities_on_request(client, seg):
    import base64
    import io

    from PIL import Image

    r = post_image(client, png(IMAGE), probabilities="true")
    maps = r.json()["probabilities"]["maps"]
    _, probs = seg.predict(IMAGE, probabilities=True)
    p1 = np.asarray(Image.open(io.BytesIO(base64.b64decode(maps[seg.classes[1]]))))
    assert p1.shape == (60, 80) and np.abs(p1 / 255.0 - probs[1]).max() <= 1 / 255 + 1e-6


def _truncated():
    data = png(rgb(100, 100, seed=1))
    return data[: len(data) // 2]


BAD = [
    ("empty body", b"", "image/png", {}, 400, "empty"),
    ("not an image", b"hello, I am text", "image/png", {}, 415, "not a png"),
    ("truncated image", _truncated(), "image/png", {}, 400, "truncated"),
    ("broken header", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", {}, 400, "broken"),
    ("over the pixel limit", png(np.zeros((500, 500, 3), np.uint8)), "image/png", {}, 413, "pixels"),
    ("over the size limit", b"\x89PNG\r\n\x1a\n" + bytes(2_100_000), "image/png", {}, 413, "limit"),
    ("wrong content type", png(IMAGE), "application/json", {}, 415, "content type"),
    ("no content type", png(IMAGE), "", {}, 415, "content type"),
    ("unknown model version", png(IMAGE), "image/png", {"version": "v9"}, 404, "unknown model version"),
    ("bad parameter", png(IMAGE), "image/png", {"probabilities": "maybe"}, 422, "probabilities"),
    ("16-bit image", encoded(np.full((20, 20), 4000, np.uint16), "PNG"), "image/png", {}, 415, "8 bits"),
]


@pytest.mark.parametrize("name, body, ctype, params, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_one_json_line(client, name, body, ctype, params, status, words):
    r = post_image(client, body, ctype, **params)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and "\n" not in r.text and "Traceback" not in r.text
    assert words.lower() in r.json()["error"].lower()


def test_bad_multipart(client):
    r = client.post("/v1/segment", files={"other": ("x.png", png(IMAGE), "image/png")})
    assert r.status_code == 400 and "file field 'image'" in r.json()["error"]
    r = client.post("/v1/segment", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert 400 <= r.status_code < 500 and list(r.json()) == ["error"]


def test_unknown_route_is_json(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and list(r.json()) == ["error"]


def test_feedback_scores_the_answer_given(client, seg):
    r = post_image(client, png(IMAGE))
    rid = r.json()["request_id"]
    pred = seg.predict(IMAGE)
    truth = np.zeros_like(pred)
    truth[10:40, 20:60] = 1
    r = client.post("/v1/feedback", params={"request_id": rid}, content=png(truth * 255),
                    headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    f = r.json()
    from edgeseg.runtime.metrics import dice_score

    assert f["model"]["version"] == "v1" and f["dice"] == pytest.approx(dice_score(pred > 0, truth > 0))
    assert f["fp_pixels"] == int(((pred == 1) & (truth == 0)).sum())
    assert f["fn_pixels"] == int(((pred == 0) & (truth == 1)).sum())
    r = client.post("/v1/feedback", data={"request_id": rid}, files={"mask": ("m.png", png(truth), "image/png")})
    assert r.status_code == 200 and r.json()["dice"] == pytest.approx(f["dice"])
    m = parse_prometheus(client.get("/metrics").text)
    assert m[("edgeseg_feedback_total", (("version", "v1"),))] == 2
    assert m[("edgeseg_feedback_dice_mean", (("version", "v1"),))] == pytest.approx(f["dice"])
    lines = [json.loads(x) for x in (client.log_dir / "requests.jsonl").read_text().splitlines()]
    fb = [x for x in lines if x["type"] == "feedback"]
    assert len(fb) == 2 and fb[0]["request_id"] == rid and fb[0]["dice"] == pytest.approx(f["dice"])


def test_bad_feedback(client):
    rid = post_image(client, png(IMAGE)).json()["request_id"]
    wrong = client.post("/v1/feedback", params={"request_id": rid}, content=png(np.zeros((10, 10), np.uint8)),
                        headers={"content-type": "image/png"})
    assert wrong.status_code == 422 and "size" in wrong.json()["error"]
    labels = client.post("/v1/feedback", params={"request_id": rid}, content=png(np.full((60, 80), 7, np.uint8)),
                         headers={"content-type": "image/png"})
    assert labels.status_code == 422 and "classes" in labels.json()["error"]
    unknown = client.post("/v1/feedback", params={"request_id": "nope"}, content=png(np.zeros((60, 80), np.uint8)),
                          headers={"content-type": "image/png"})
    assert unknown.status_code == 404 and "unknown request id" in unknown.json()["error"]
    empty = client.post("/v1/feedback", params={"request_id": rid}, content=b"", headers={"content-type": "image/png"})
    assert empty.status_code == 400


def test_request_log_lines(client):
    post_image(client, png(IMAGE))
    post_image(client, b"", "image/png")
    lines = [json.loads(x) for x in (client.log_dir / "requests.jsonl").read_text().splitlines()]
    ok, refused = lines[0], lines[1]
    assert ok["status"] == 200 and ok["version"] == "v1" and ok["image"] == [60, 80]
    assert set(ok) >= {"time", "request_id", "sha256", "latency_ms", "drift_score", "drifted", "areas",
                       "mean_confidence"}
    assert "image_file" not in ok and not (client.log_dir / "images").exists()  # no image data unless asked
    assert refused["status"] == 400 and "empty" in refused["error"]


def test_request_log_rotates(tmp_path):
    from edgeseg.serve.requestlog import RequestLog, read_log

    log = RequestLog(tmp_path, max_bytes=200, backups=2)
    for i in range(20):
        log.write({"type": "segment", "i": i, "pad": "x" * 50})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["requests.jsonl", "requests.jsonl.1", "requests.jsonl.2"]
    kept = [e["i"] for e in read_log(tmp_path)]
    assert kept == sorted(kept) and kept[-1] == 19 and all(p.stat().st_size <= 200 for p in tmp_path.iterdir())


def test_metrics_text_parses_and_counts(client):
    post_image(client, png(IMAGE))
    post_image(client, b"nope", "image/png")
    m = parse_prometheus(client.get("/metrics").text)
    assert m[("edgeseg_requests_total", (("endpoint", "segment"), ("status", "200")))] == 1
    assert m[("edgeseg_requests_total", (("endpoint", "segment"), ("status", "415")))] == 1
    assert m[("edgeseg_errors_total", (("endpoint", "segment"), ("reason", "not_an_image")))] == 1
    assert m[("edgeseg_request_latency_seconds_count", (("version", "v1"),))] == 1
    assert m[("edgeseg_request_latency_seconds_bucket", (("le", "+Inf"), ("version", "v1")))] == 1
    assert m[("edgeseg_drift_checked_total", (("version", "v1"),))] == 1
    flagged = m[("edgeseg_drift_flagged_total", (("version", "v1"),))]
    assert m[("edgeseg_drift_flag_rate", (("version", "v1"),))] == flagged
    assert [k for k in m if k[0] == "edgeseg_model_info"][0][1][1] == ("version", "v1")


def test_admin_switch_and_rollback_over_http(client, store):
    r = client.post("/v1/models/v2/activate")
    assert r.status_code == 200 and r.json()["active"] == "v2"
    assert post_image(client, png(IMAGE)).json()["model"]["version"] == "v2"
    assert client.post("/v1/models/v9/activate").status_code == 404
    r = client.post("/v1/models/rollback")
    assert r.status_code == 200 and r.json()["active"] == "v1"
    assert client.get("/health").json()["version"] == "v1"
    m = parse_prometheus(client.get("/metrics").text)
    assert m[("edgeseg_switches_total", (("action", "rollback"), ("outcome", "ok")))] == 1


def test_tampered_version_is_refused_over_http_and_v1_keeps_serving(client, store, tmp_path):
    import shutil

    from test_serve_helpers import tampered_copy

    from edgeseg.serve.store import ModelStore

    bad = store / "versions" / "v3"
    tampered_copy(store / "versions" / "v1", tmp_path / "t")
    shutil.copytree(tmp_path / "t", bad)  # slipped in behind the store's back
    try:
        r = client.post("/v1/models/v3/activate")
        assert r.status_code == 409 and "not activated" in r.json()["error"]
        assert client.get("/health").json()["version"] == "v1"
        assert ModelStore(store).active == "v1"
    finally:
        shutil.rmtree(bad)


def test_admin_needs_a_token_when_set_or_bound_wide(store):
    from fastapi.testclient import TestClient

    from edgeseg.serve.app import create_app

    with TestClient(create_app(store, token="s3cret", host="0.0.0.0")) as c:
        assert c.post("/v1/models/rollback").status_code == 401
        assert c.post("/v1/models/v1/activate", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/models/v1/activate", headers={"authorization": "Bearer s3cret"}).status_code == 200
    with TestClient(create_app(store, host="0.0.0.0")) as c:
        r = c.post("/v1/models/v1/activate")
        assert r.status_code == 403 and "--token" in r.json()["error"]


def test_no_active_version_is_not_ready(tiny_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from edgeseg.serve.app import create_app
    from edgeseg.serve.store import ModelStore

    ModelStore(tmp_path / "s", create=True).add(tiny_bundle, "a")
    with TestClient(create_app(tmp_path / "s")) as c:
        assert c.get("/health").status_code == 503
        r = post_image(c, png(IMAGE))
        assert r.status_code == 503 and "no model is loaded" in r.json()["error"]


def test_switch_during_requests_loses_nothing(client, store):
    """8 threads post images while the version flips back and forth: every request answers 200,
    names the version it ran on, and its mask is that version's (both are the same model here,
    so each mask must equal the serial prediction)."""
    from edgeseg.runtime import Segmenter
    from edgeseg.serve.encode import rle_decode

    images = [rgb(40 + i, 50 + 2 * i, seed=i) for i in range(4)]
    want = [Segmenter(store / "versions" / "v1").predict(im) for im in images]
    bodies = [png(im) for im in images]
    results, errors, switches = [], [], []
    stop = threading.Event()

    def worker(k):
        for j in range(6):
            i = (k + j) % len(images)
            r = post_image(client, bodies[i])
            if r.status_code != 200:
                errors.append(r.text)
                continue
            results.append((i, r.json()["model"]["version"], rle_decode(r.json()["mask"])))

    def switcher():
        n = 0
        while not stop.is_set():
            target = "v2" if n % 2 == 0 else "v1"
            switches.append(client.post(f"/v1/models/{target}/activate").status_code)
            n += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    sw = threading.Thread(target=switcher)
    sw.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sw.join()
    assert errors == [] and len(results) == 48
    assert len(switches) >= 2 and set(switches) == {200}
    assert {v for _, v, _ in results} <= {"v1", "v2"}
    for i, _, mask in results:
        np.testing.assert_array_equal(mask, want[i])


def test_service_runs_where_torch_cannot_be_imported(store):
    """The service is torch-free in behaviour, not only in its imports: torch, transformers, cv2
    and typer made unimportable, it still answers."""
    import subprocess
    import sys

    code = f"""
import sys
for name in ("torch", "transformers", "torch_pruning", "cv2", "typer", "onnx"):
    sys.modules[name] = None
from fastapi.testclient import TestClient
from edgeseg.serve.app import create_app
import io, numpy as np
from PIL import Image
buf = io.BytesIO(); Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, format="PNG")
with TestClient(create_app({str(store)!r})) as c:
    r = c.post("/v1/segment", content=buf.getvalue(), headers={{"content-type": "image/png"}})
    print(r.status_code, r.json()["size"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["200", "[20,", "30]"], r.stderr


def test_missing_web_framework_is_one_line(store, monkeypatch):
    import sys

    from edgeseg.runtime.errors import MissingDependency
    from edgeseg.serve.app import create_app

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependency, match=r'pip install "edgeseg\[serve\]"'):
        create_app(store)


def test_source_pixels_for_a_model_with_an_intensity_policy(tiny_bundle, tmp_path, client):
    """A CT-windowed bundle takes float/16-bit gray images (HU) and the runtime maps them; a model
    without a policy refuses them (see BAD, 16-bit image)."""
    from fastapi.testclient import TestClient

    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.intensity import parse
    from edgeseg.serve.app import create_app
    from edgeseg.serve.encode import rle_decode
    from test_serve_helpers import relabelled

    ct = relabelled(tiny_bundle, tmp_path / "ct", "ct", intensity=parse("ct:soft-tissue").to_dict())
    hu = np.random.default_rng(0).uniform(-300, 400, (40, 50)).astype(np.float32)
    body = encoded(hu, "TIFF")
    with TestClient(create_app(ct)) as c:
        r = post_image(c, body, "image/tiff")
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(rle_decode(r.json()["mask"]), Segmenter(ct).predict(hu))
    assert r.json()["intensity"]["flagged"] is False
    refused = post_image(client, body, "image/tiff")
    assert refused.status_code == 415 and "intensity policy" in refused.json()["error"]


def test_images_are_kept_only_when_asked(store, tmp_path):
    from fastapi.testclient import TestClient

    from edgeseg.serve.app import create_app

    body = png(IMAGE)
    with TestClient(create_app(store, log_dir=tmp_path / "log", keep_images=True)) as c:
        rid = post_image(c, body).json()["request_id"]
    line = json.loads((tmp_path / "log" / "requests.jsonl").read_text().splitlines()[0])
    assert line["image_file"] == f"images/{rid}.png"
    assert (tmp_path / "log" / "images" / f"{rid}.png").read_bytes() == body
