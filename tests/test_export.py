import json
import shutil

import numpy as np
import pytest
import torch

from edgeseg.export.onnx import ExportConfig, export_onnx
from edgeseg.export.validate import ParityError, Tolerance, check
from edgeseg.fold import FoldedDecodeHead, decode_head_macs, fold_decode_head
from edgeseg.model.variants import build_model
from edgeseg.runtime.bundle import BundleError, read_bundle
from edgeseg.runtime.segmenter import Segmenter


def _randomise_bn(model):
    bn = model.decode_head.batch_norm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


@pytest.mark.parametrize("variant,size", [("tiny", 64), ("b0", 128)])
def test_fold_is_exact_and_cheaper(variant, size):
    import copy

    m = build_model(variant).eval()
    _randomise_bn(m)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = m(pixel_values=x).logits
        f = fold_decode_head(copy.deepcopy(m))
        got = f(pixel_values=x).logits
    assert isinstance(f.decode_head, FoldedDecodeHead)
    rel = (got - ref).abs().max() / ref.abs().max()
    assert rel < 1e-5
    assert decode_head_macs(f, size, size) < decode_head_macs(m, size, size)


def test_fold_refuses_training_mode():
    from edgeseg.errors import ModelError

    with pytest.raises(ModelError, match="eval mode"):
        fold_decode_head(build_model("tiny").train())


@pytest.mark.parametrize("post", ["none", "mask+probs"])
def test_onnx_export_parity_and_postprocess(tmp_path, post):
    import onnx
    import onnxruntime as ort

    m = build_model("tiny").eval()
    _randomise_bn(m)
    p = export_onnx(m, tmp_path / "m.onnx", 64, 64, ExportConfig(postprocess=post, dynamic_hw=True))
    model = onnx.load(str(p))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not m.training and not m.decode_head.training  # export must not leave BatchNorm in train mode
    s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, 96, 64)).astype(np.float32)  # other batch AND size
    outs = s.run(None, {"pixel_values": x})
    with torch.no_grad():
        ref = m(pixel_values=torch.from_numpy(x)).logits
    if post == "none":
        assert np.abs(outs[0] - ref.numpy()).max() < 1e-4
    else:
        up = torch.nn.functional.interpolate(ref, size=(96, 64), mode="bilinear", align_corners=False)
        mask, probs = outs
        assert mask.dtype == np.uint8 and mask.shape == (3, 96, 64)
        assert (mask == up.argmax(1).numpy()).mean() > 0.999
        assert np.abs(probs - up.softmax(1).numpy()).max() < 1e-4


def test_bundle_runs_and_matches_checkpoint(tiny_ckpt, tiny_bundle, embedded):
    from edgeseg.data import folders as D
    from edgeseg.evaluate import evaluate
    from edgeseg.runners import open_model

    b = read_bundle(tiny_bundle)
    assert b.precision == "fp32" and b.classes == ["background", "foreground"]
    prov = b.manifest["provenance"]
    assert len(prov["source_sha256"]) == 64 and prov["versions"]["onnx"]
    assert b.manifest["parity"]["mask_agreement"] >= 0.999
    samples = D.discover(embedded, "val")
    s_t, _, _ = evaluate(open_model(tiny_ckpt), samples)
    s_b, _, _ = evaluate(open_model(tiny_bundle), samples)
    assert abs(s_t["mean_dice"] - s_b["mean_dice"]) <= 0.001


def test_bare_onnx_carries_its_preprocessing(tiny_bundle, tmp_path):
    shutil.copy(tiny_bundle / "model.onnx", tmp_path / "x.onnx")
    seg = Segmenter(tmp_path / "x.onnx")
    assert seg.preprocess_spec.height == 64
    mask = seg.predict(np.zeros((50, 70, 3), np.uint8))
    assert mask.shape == (50, 70)


@pytest.mark.parametrize("what", ["model_byte", "manifest_value", "schema", "path_component", "missing_file"])
def test_tampered_bundle_refused(tiny_bundle, tmp_path, what):
    d = shutil.copytree(tiny_bundle, tmp_path / "b")
    mf = d / "edgeseg.json"
    m = json.loads(mf.read_text())
    if what == "model_byte":
        data = bytearray((d / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (d / "model.onnx").write_bytes(bytes(data))
        match = "does not match its sha256"
    elif what == "manifest_value":
        m["preprocess"]["mean"][0] = 0.1
        mf.write_text(json.dumps(m))
        match = "modified after it was written"
    elif what == "schema":
        m["schema_version"] = 99
        mf.write_text(json.dumps(m))
        match = "schema version 99"
    elif what == "path_component":
        m["files"]["../evil.onnx"] = m["files"].pop("model.onnx")
        m["model"] = "../evil.onnx"
        mf.write_text(json.dumps(m))
        match = "path components"
    else:
        (d / "model.onnx").unlink()
        match = "missing"
    with pytest.raises(BundleError, match=match):
        Segmenter(d)


def test_parity_check_refuses_disagreement():
    rep = {"images": 3, "mask_agreement": 0.98, "max_abs_logit_diff": 0.5, "dice_diff": 0.02}
    with pytest.raises(ParityError, match="mask agreement"):
        check(rep, Tolerance())


def test_fp16_export(tiny_ckpt, tmp_path):
    from edgeseg.export.pipeline import export_bundle

    path, rep = export_bundle(tiny_ckpt, tmp_path / "fp16", ExportConfig(fp16=True), limit=4)
    assert read_bundle(path).precision == "fp16"
    assert rep["mask_agreement"] >= 0.995
