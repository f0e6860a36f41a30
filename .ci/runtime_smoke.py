"""CI: in a virtual environment holding only the device runtime (`pip install .`), prove that
the toolkit's heavy dependencies are absent and that a bundle runs with Segmenter.

usage: python .ci/runtime_smoke.py BUNDLE_DIR
"""

import importlib.util
import sys

import numpy as np

absent = ("torch", "transformers", "torch_pruning", "cv2", "typer", "onnx")
present = [m for m in absent if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"runtime-only install pulled in toolkit dependencies: {', '.join(present)}")

from edgeseg.runtime import Segmenter  # noqa: E402

seg = Segmenter(sys.argv[1])
rng = np.random.default_rng(0)
image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
mask, probs = seg.predict(image, probabilities=True)
assert mask.shape == (300, 420) and mask.dtype == np.uint8, (mask.shape, mask.dtype)
assert probs.shape == (seg.num_classes, 300, 420) and np.allclose(probs.sum(axis=0), 1, atol=1e-4)
loaded = sorted(m.split(".")[0] for m in sys.modules)
leaked = [m for m in absent if m in loaded]
if leaked:
    sys.exit(f"importing edgeseg.runtime loaded toolkit modules: {', '.join(leaked)}")
print(f"runtime-only install OK: {seg.runner.name}, classes {seg.classes}, mask {mask.shape}, "
      f"foreground {float((mask > 0).mean()):.3f}")
