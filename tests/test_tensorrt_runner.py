"""The runtime's TensorRT runner (edgeseg/runtime/runners/tensorrt.py, cuda.py) and the
Segmenter on an engine: shape checks and the one sidecar reader (pure), then engines of the
fake ``tensorrt`` run through the fake CUDA memory and compared with ONNX Runtime, then real
builds, marked ``tensorrt``, which skip unless TensorRT and cuda-python or pycuda import."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest
from trt_fakes import H, W, bundle, drift_stats, engine, fake, make_bundle, ort_run  # noqa: F401

import edgeseg.runtime.runners.tensorrt as rtt
from edgeseg.errors import BundleError, ConfigError, EdgesegError, InputError
from edgeseg.export import tensorrt as xtrt
from edgeseg.runtime.errors import MissingDependency
from edgeseg.runtime.runners import cuda


def test_check_input_shape():
    eng, prof = (-1, 3, 32, 32), ((1, 3, 32, 32), (4, 3, 32, 32))
    rtt.check_input_shape((2, 3, 32, 32), eng, prof)
    rtt.check_input_shape((9, 3, 32, 32), eng, prof)  # over max batch: infer splits it
    with pytest.raises(InputError, match="fixed at 32"):
        rtt.check_input_shape((1, 3, 64, 64), eng, prof)
    with pytest.raises(InputError, match="dimensions"):
        rtt.check_input_shape((3, 32, 32), eng, prof)
    with pytest.raises(InputError, match="profile"):
        rtt.check_input_shape((1, 3, 64, 64), (-1, 3, -1, -1), ((1, 3, 32, 32), (4, 3, 32, 32)))
    rtt.check_input_shape((6, 3, 32, 32), (2, 3, 32, 32), None)  # fixed batch 2: run as 3 x 2
    with pytest.raises(InputError, match="not a multiple"):
        rtt.check_input_shape((3, 3, 32, 32), (2, 3, 32, 32), None)


def test_sidecar_path_and_reading(tmp_path):
    e = tmp_path / "m.engine"
    assert rtt.sidecar_path(e).name == "m.engine.json"
    assert rtt.read_sidecar(e) == {}
    rtt.sidecar_path(e).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        rtt.read_sidecar(e)



def test_missing_tensorrt_is_a_missing_dependency_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    eng = tmp_path / "x.engine"
    eng.write_bytes(b"whatever")
    with pytest.raises(MissingDependency, match=r"pip install edgeseg\[tensorrt\]"):
        rtt.TensorRTRunner(eng)


def test_missing_cuda_library_is_a_missing_dependency(monkeypatch):
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingDependency) as e:
        cuda.open_cuda(0)
    assert "cuda-python" in str(e.value) and "pycuda" in str(e.value)


def test_runner_refuses_a_missing_engine(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        rtt.TensorRTRunner(tmp_path / "nope.engine")



def test_fake_runner_matches_onnxruntime(engine, bundle):
    x = np.random.default_rng(1).standard_normal((3, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(engine) as r:
        assert r.name == "tensorrt" and r.input_name == "pixel_values" and r.output_names == ["logits"]
        assert r.profile == ((1, 3, H, W), (4, 3, H, W))
        out = r.infer(x)
        assert list(out) == ["logits"] and out["logits"].shape == (3, 2, 8, 8)
        np.testing.assert_array_equal(out["logits"], ort_run(bundle / "model.onnx", x))
        assert r.metadata() == json.loads(rtt.sidecar_path(engine).read_text())


def test_fake_runner_splits_batches_above_the_profile(engine, bundle):
    x = np.random.default_rng(2).standard_normal((9, 3, H, W)).astype(np.float32)
    r = rtt.TensorRTRunner(engine)
    np.testing.assert_array_equal(r.infer(x)["logits"], ort_run(bundle / "model.onnx", x))
    r.close()


def test_fake_runner_with_a_fixed_batch_engine(fake, tmp_path):
    fake()
    b = make_bundle(tmp_path, batch=2)
    eng = xtrt.build_engine(b, tmp_path / "m.engine", batch=(2, 2, 2))
    with pytest.raises(ConfigError, match="fixed batch of 2"):
        xtrt.build_engine(b, tmp_path / "m.engine")
    x = np.random.default_rng(7).standard_normal((6, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(eng) as r:
        assert r.profile is None and r.max_batch == 2
        np.testing.assert_array_equal(r.infer(x)["logits"], np.concatenate([ort_run(b / "model.onnx", x[i:i + 2])
                                                                              for i in (0, 2, 4)]))
        with pytest.raises(InputError, match="not a multiple"):
            r.infer(x[:3])


def test_fake_runner_rejects_bad_input(engine):
    r = rtt.TensorRTRunner(engine)
    with pytest.raises(InputError):
        r.infer(np.zeros((3, H, W), np.float32))
    with pytest.raises(InputError, match="fixed at 32"):
        r.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputError):
        r.infer([[1.0]])
    r.close()


def test_fake_runner_close_frees_device_memory(engine):
    r = rtt.TensorRTRunner(engine)
    r.infer(np.zeros((2, 3, H, W), np.float32))
    cuda = r._cuda
    assert cuda.mine
    r.close()
    assert not cuda.mine and cuda.closed
    r.close()  # twice is fine
    with pytest.raises(EdgesegError, match="closed"):
        r.infer(np.zeros((1, 3, H, W), np.float32))


def test_fake_runner_is_thread_safe(engine, bundle):
    r = rtt.TensorRTRunner(engine)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 4, 3, H, W)).astype(np.float32) for i in range(16)]
    results = [None] * len(xs)

    def work(i):
        results[i] = r.infer(xs[i])["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, results):
        np.testing.assert_array_equal(y, ort_run(bundle / "model.onnx", x))
    r.close()


def test_fake_runner_refuses_a_stale_sidecar(engine):
    side = rtt.sidecar_path(engine)
    meta = json.loads(side.read_text())
    meta["engine_sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="sidecar"):
        rtt.TensorRTRunner(engine)


def test_fake_runner_explains_a_foreign_engine(engine, fake):
    fake("11.0.0.1")  # engine was built by the 10.3 fake
    with pytest.raises(BundleError, match="rebuild it on this device") as e:
        rtt.TensorRTRunner(engine)
    assert "10.3.0" in str(e.value) and "FakeGPU" in str(e.value)


def test_fake_engine_through_segmenter_matches_the_bundle(engine, bundle):
    from edgeseg.runtime.segmenter import Segmenter

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    a, b = Segmenter(engine), Segmenter(bundle)
    assert a.classes == b.classes and a.preprocess_spec == b.preprocess_spec
    for ma, mb in zip(a.predict_batch(images), b.predict_batch(images)):
        np.testing.assert_array_equal(ma, mb)
    a.close()
    b.close()




def test_fake_engine_through_segmenter_has_the_bundles_drift_guard(fake, tmp_path):
    from edgeseg.runtime.segmenter import Segmenter

    fake()
    b = make_bundle(tmp_path, input_stats=drift_stats())
    eng = xtrt.build_engine(b, tmp_path / "m.engine")
    a, ref = Segmenter(eng), Segmenter(b)
    assert a.drift_guard is not None and ref.drift_guard is not None
    img = np.random.default_rng(12).integers(60, 200, (40, 40, 3), dtype=np.uint8)
    gray = np.full((40, 40, 3), 128, np.uint8)
    assert a.drift(img) == ref.drift(img) and a.drift(gray) == ref.drift(gray)
    a.close()
    ref.close()


def test_fake_engine_without_input_stats_says_so(engine):
    from edgeseg.runtime.segmenter import Segmenter

    seg = Segmenter(engine)
    assert seg.drift_guard is None
    with pytest.raises(BundleError, match="input_stats"):
        seg.drift(np.zeros((8, 8, 3), np.uint8))
    seg.close()


# real TensorRT (skips here: TensorRT cannot be installed on this CPU machine) --------------


@pytest.fixture
def real_trt():
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"TensorRT is not importable here ({type(exc).__name__}); run on a GPU/Jetson with "
                    "pip install edgeseg[tensorrt]")
    try:
        cuda.open_cuda(0).close()
    except EdgesegError as exc:
        pytest.skip(f"no CUDA memory library or device: {exc}")
    return tensorrt


@pytest.mark.tensorrt
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_real_engine_matches_onnxruntime(real_trt, tmp_path, kind):
    b = make_bundle(tmp_path, kind)
    cache = tmp_path / "timing.cache"
    eng = xtrt.build_engine(b, tmp_path / "m.engine", batch=(1, 2, 4), timing_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    side = json.loads(rtt.sidecar_path(eng).read_text())
    assert side["tensorrt"]["version"] == ".".join(map(str, rtt.tensorrt_version()))
    assert side["precision"] in (kind, "int8+fp16")
    x = np.random.default_rng(5).standard_normal((3, 3, H, W)).astype(np.float32)
    with rtt.TensorRTRunner(eng) as r:
        got = r.infer(x)["logits"]
        big = r.infer(np.concatenate([x, x, x]))["logits"]  # 9 > max batch 4: split
    want = ort_run(b / "model.onnx", x)
    tol = 2e-2 if kind == "fp32" else 0.1  # TF32 / INT8 kernels
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    np.testing.assert_allclose(big[3:6], got, atol=1e-5)


@pytest.mark.tensorrt
def test_real_engine_fp16_request_and_segmenter(real_trt, tmp_path):
    from edgeseg.runtime.segmenter import Segmenter

    b = make_bundle(tmp_path, "fp32")
    major = rtt.tensorrt_version()[0]
    if major >= 11:
        with pytest.raises(ConfigError, match="strongly typed"):
            xtrt.build_engine(b, tmp_path / "m.engine", precision="fp16")
        eng = xtrt.build_engine(b, tmp_path / "m.engine")
    else:
        eng = xtrt.build_engine(b, tmp_path / "m.engine", precision="fp16")
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2)]
    a, ref = Segmenter(eng), Segmenter(b)
    agree = np.mean([np.mean(ma == mb) for ma, mb in zip(a.predict_batch(images), ref.predict_batch(images))])
    assert agree > 0.97
    a.close()
    ref.close()
