import json

import pytest

from edgeseg.errors import ConfigError, ModelError
from edgeseg.model.checkpoint import checkpoint_sha256, load_checkpoint
from edgeseg.model.variants import build_config, build_model


def test_variants_and_unknown_variant():
    assert build_config("b0").hidden_sizes == [32, 64, 160, 256]
    assert build_config("b2").decoder_hidden_size == 768
    with pytest.raises(ConfigError, match="unknown variant"):
        build_config("b9")


def test_checkpoint_roundtrip_plain_hf(tiny_ckpt):
    from transformers import SegformerForSemanticSegmentation

    m = SegformerForSemanticSegmentation.from_pretrained(tiny_ckpt)
    assert m.config.num_labels == 2
    model, meta = load_checkpoint(tiny_ckpt)
    assert meta.preprocess.height == 64 and meta.classes == ["background", "foreground"]
    assert "val" in meta.metrics and meta.provenance["init"].startswith("random")
    assert len(checkpoint_sha256(tiny_ckpt)) == 64


def test_not_a_segformer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a SegFormer"):
        load_checkpoint(tmp_path)


def test_missing_and_pickle_only(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="pickle"):
        load_checkpoint(tmp_path)


def test_truncated_safetensors(tiny_ckpt, tmp_path):
    import shutil

    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_checkpoint(d)


def test_build_model_is_deterministic():
    a, b = build_model("tiny", seed=3), build_model("tiny", seed=3)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))
