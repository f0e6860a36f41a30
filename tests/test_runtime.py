import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import blocking_imports

from edgeseg.runtime import InputError, Segmenter

RUNTIMES = ["onnxruntime", "openvino"]  # the runner tests every ONNX runtime passes (OpenVINO: test_openvino.py)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_never_imports_torch(tiny_bundle, runtime):
    code = blocking_imports('torch', 'transformers', 'torch_pruning', 'cv2') + textwrap.dedent(f"""
        import numpy as np
        from edgeseg.runtime import Segmenter
        seg = Segmenter({str(tiny_bundle)!r}, runtime={runtime!r})
        m = seg.predict(np.zeros((33, 47, 3), np.uint8))
        assert m.shape == (33, 47)
        bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'cv2')]
        assert not bad, bad
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_runtime_in_a_venv_with_only_numpy_and_onnxruntime(tiny_bundle, tmp_path):
    """Install nothing but numpy + onnxruntime (from this environment's site-packages) next to
    a copy of edgeseg/runtime, and run a bundle there."""
    import shutil
    from pathlib import Path

    import numpy
    import onnxruntime

    import edgeseg.runtime as rt

    site = tmp_path / "site"
    pkg = site / "edgeseg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copytree(Path(rt.__file__).parent, pkg / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    deps = [Path(numpy.__file__).parent, Path(onnxruntime.__file__).parent]
    extra = [p for p in Path(numpy.__file__).parent.parent.glob("numpy.libs")]
    for d in deps + extra:
        (site / d.name).symlink_to(d)
    code = ("import sys, numpy as np; from edgeseg.runtime import Segmenter; "
            f"s = Segmenter({str(tiny_bundle)!r}); print(s.predict(np.zeros((20, 30, 3), np.uint8)).shape)")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); " + code],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(20, 30)"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_input_validation(tiny_bundle, runtime):
    seg = Segmenter(tiny_bundle, runtime=runtime)
    with pytest.raises(InputError, match="uint8"):
        seg.predict(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(InputError, match="HxWx3"):
        seg.predict(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(InputError, match="non-empty"):
        seg.predict_batch([])
    mask, prob = seg.predict(np.zeros((10, 12), np.uint8), probabilities=True)  # gray is promoted
    assert mask.shape == (10, 12) and prob.shape == (2, 10, 12)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batch_equals_single_and_threads_agree(tiny_bundle, runtime):
    seg = Segmenter(tiny_bundle, threads=1, runtime=runtime)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40 + 7 * i, 60 - 3 * i, 3), dtype=np.uint8) for i in range(6)]
    single = [seg.predict(im) for im in imgs]
    batch = seg.predict_batch(imgs)
    assert all((a == b).all() for a, b in zip(single, batch))
    results = {}

    def work(k):
        results[k] = [seg.predict(imgs[(k + j) % 6]) for j in range(6)]

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for k, masks in results.items():
        assert all((m == single[(k + j) % 6]).all() for j, m in enumerate(masks))
