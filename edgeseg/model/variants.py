"""SegFormer variants (b0..b5, and ``tiny`` for tests and the demo) and building models from them.

Nothing here downloads anything: a variant is a config built in-process, a config file a local path.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeseg.errors import ConfigError

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


def build_config(variant: str = "b0", num_labels: int = 2, config_file: str | Path | None = None, **overrides):
    """A ``SegformerConfig`` for a named variant (b0..b5, tiny) or a JSON config file."""
    from transformers import SegformerConfig

    if config_file is not None:
        p = Path(config_file)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if d.get("model_type", "segformer") != "segformer":
            raise ConfigError(f"config file {p} is a {d.get('model_type')!r} config, not a SegFormer")
        d.update(overrides)
        d["num_labels"] = num_labels
        return SegformerConfig(**{k: v for k, v in d.items() if k not in ("architectures", "transformers_version")})
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
    return SegformerForSemanticSegmentation(cfg)
