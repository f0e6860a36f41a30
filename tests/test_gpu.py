"""What only a GPU or a Jetson can show. Marked `cuda` / `jetson`: they skip elsewhere with the
reason, and have NOT run where edgeseg is developed (no GPU there)."""

import numpy as np
import pytest

from conftest import EMBEDDED


@pytest.mark.cuda
def test_train_on_cuda_gives_a_checkpoint_that_runs_on_cpu(tmp_path):
    from edgeseg.runners import open_model
    from edgeseg.train.loop import TrainConfig, train

    out = train(TrainConfig(data=str(EMBEDDED), out=str(tmp_path / "m"), variant="tiny", size=64, epochs=1,
                            batch_size=8, warmup_steps=1, device="cuda", progress=False))
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = open_model(out, device="cuda").predict(img, probabilities=True)[1]
    b = open_model(out, device="cpu").predict(img, probabilities=True)[1]
    assert np.abs(a - b).max() < 1e-3


@pytest.mark.cuda
def test_bench_times_the_torch_cuda_backend(tiny_ckpt):
    from edgeseg.measure.timing import time_model
    from edgeseg.runners import open_model

    seg = open_model(tiny_ckpt, device="cuda")
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    timing = time_model(seg, [img], warmup=2, runs=5)
    assert seg.runner.name == "torch-cuda" and timing is not None


@pytest.mark.jetson
def test_jetson_release_and_power_rails_are_read():
    from edgeseg.measure.machine import machine_info

    info = machine_info()
    assert info.get("jetson") and info["jetson"].get("l4t")
