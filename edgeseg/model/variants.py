"""SegFormer variants (b0..b5, and ``tiny`` for tests and the demo) and building models from them.

Nothing here downloads anything: a variant is a config built in-process, a config file a local path
whose fields are checked (types, one value per encoder block, ranges) before transformers sees them.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.checks import integer, number
from edgeseg.errors import ConfigError
from edgeseg.runtime.files import read_json

_B_HEADS = [1, 2, 5, 8]
VARIANTS: dict[str, dict] = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
    # for tests and the embedded demo: a few thousand parameters, runs in milliseconds
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], decoder_hidden_size=32,
                 num_attention_heads=[1, 1, 2, 2]),
}


# SegformerConfig fields a config file may set, checked before transformers sees them (it would
# accept "abc" as hidden sizes and fail later inside torch with a traceback)
_PER_BLOCK = {"hidden_sizes": 4096, "depths": 64, "num_attention_heads": 64, "sr_ratios": 64, "patch_sizes": 32,
              "strides": 32, "mlp_ratios": 16}  # name -> largest sensible value
_FRACTIONS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob", "drop_path_rate")


def check_config_dict(d: dict, where: str, heads: bool = True) -> None:
    """Refuse a SegFormer config whose fields have the wrong type, length or range (one line,
    naming ``where`` and the field). ``heads``: also that the heads divide each block's width."""
    def err(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    if not isinstance(d.get("model_type", "segformer"), str):
        raise err(f"model_type must be a string, got {d['model_type']!r}")
    blocks = integer("num_encoder_blocks", d.get("num_encoder_blocks", 4), 1, 8, error=err)
    for name, top in _PER_BLOCK.items():
        if name not in d:
            continue
        v = d[name]
        if not isinstance(v, list) or len(v) != blocks:
            raise err(f"{name} must list {blocks} whole numbers (one per encoder block), got {v!r}"[:300])
        for x in v:
            integer(name, x, 1, top, error=err)
    heads_, sizes = d.get("num_attention_heads"), d.get("hidden_sizes")
    if heads and isinstance(heads_, list) and isinstance(sizes, list) and any(s % h for s, h in zip(sizes, heads_)):
        raise err(f"num_attention_heads {heads_} must divide hidden_sizes {sizes} block by block")
    if "decoder_hidden_size" in d:
        integer("decoder_hidden_size", d["decoder_hidden_size"], 1, 8192, error=err)
    if d.get("num_channels", 3) != 3:
        raise err(f"num_channels must be 3 (edgeseg models take RGB images), got {d['num_channels']!r}")
    for name in _FRACTIONS:
        if d.get(name) is not None:
            number(name, d[name], 0.0, 1.0, hi_open=True, error=err)
    for name in ("layer_norm_eps", "initializer_range"):
        if name in d:
            number(name, d[name], 0.0, 1.0, lo_open=True, error=err)


def build_config(variant: str = "b0", num_labels: int = 2, config_file: str | Path | None = None, **overrides):
    """A ``SegformerConfig`` for a named variant (b0..b5, tiny) or a JSON config file."""
    from transformers import SegformerConfig

    if config_file is not None:
        p = Path(config_file)
        d = read_json(p, ConfigError, what=f"config file {p}")
        if d.get("model_type", "segformer") != "segformer":
            raise ConfigError(f"config file {p} has model_type {d.get('model_type')!r}: not a SegFormer config")
        check_config_dict(d, f"config file {p}")
        d.update(overrides)
        d["num_labels"] = num_labels
        d = {k: v for k, v in d.items() if k not in ("architectures", "transformers_version", "id2label", "label2id")}
        try:
            return SegformerConfig(**d)
        except Exception as exc:  # transformers raises several types for values it cannot use
            raise ConfigError(f"config file {p} is not a usable SegformerConfig: {str(exc).splitlines()[0]}") from None
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    kw = dict(num_attention_heads=_B_HEADS, mlp_ratios=[4, 4, 4, 4], sr_ratios=[8, 4, 2, 1])
    kw.update(VARIANTS[variant])
    kw.update(overrides)
    return SegformerConfig(num_labels=num_labels, **kw)


def build_model(variant: str = "b0", num_labels: int = 2, config_file=None, seed: int | None = 0, **overrides):
    import torch
    from transformers import SegformerForSemanticSegmentation

    cfg = build_config(variant, num_labels, config_file, **overrides)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return SegformerForSemanticSegmentation(cfg)
    except Exception as exc:  # a config file that passed the field checks but still does not build
        if config_file is None:
            raise
        raise ConfigError(f"config file {config_file} does not build a SegFormer: {str(exc).splitlines()[0]}") from None
