"""Exact graph rewrites of a SegFormer: the same function with fewer FLOPs.

Decode-head folding. The HF decode head computes, for encoder stages i = 0..3,

    y = ReLU(BN(Wf @ concat_i(up(Wp_i h_i + bp_i))))        (concat in reverse stage order)

Bilinear upsampling and 1x1 convolutions are linear and commute, and BN in eval mode is an
affine map per channel, so with Wf_i the slice of the fuse conv that sees stage i:

    y = ReLU(sum_i up(A_i h_i) + c),   A_i = s * Wf_i @ Wp_i,   c = s * (sum_i Wf_i bp_i - mu) + beta

with s = gamma / sqrt(var + eps). Each A_i is one small 1x1 conv applied at its stage's own
(low) resolution BEFORE upsampling; the 4x-wide concat and the big fuse conv disappear.
Bilinear upsampling (align_corners=False) reproduces constants exactly, so the bias can be
added once after the sum. Dropout is the identity in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.errors import ModelError


class FoldedDecodeHead(nn.Module):
    """Drop-in replacement for ``SegformerDecodeHead`` in eval mode."""

    def __init__(self, stage_convs: list[nn.Conv2d], classifier: nn.Conv2d) -> None:
        super().__init__()
        # stage_convs[0] (full resolution) carries the folded bias; the others have none
        self.stage_convs = nn.ModuleList(stage_convs)
        self.activation = nn.ReLU()
        self.classifier = classifier

    @classmethod
    def empty(cls, in_channels: list[int], width: int, num_labels: int) -> "FoldedDecodeHead":
        """The module structure only (weights to be loaded), e.g. for a pruned checkpoint."""
        convs = [nn.Conv2d(c, width, kernel_size=1, bias=(i == 0)) for i, c in enumerate(in_channels)]
        return cls(convs, nn.Conv2d(width, num_labels, kernel_size=1))

    def forward(self, encoder_hidden_states, **kwargs) -> torch.Tensor:
        size = encoder_hidden_states[0].shape[2:]
        acc = self.stage_convs[0](encoder_hidden_states[0])
        for h, conv in zip(encoder_hidden_states[1:], self.stage_convs[1:]):
            acc = acc + nn.functional.interpolate(conv(h), size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.activation(acc))


@torch.no_grad()
def fold_decode_head(model) -> nn.Module:
    """Replace ``model.decode_head`` by its folded equivalent, in place; returns the model.

    The model must be in eval mode (BatchNorm uses its running statistics).
    """
    head = model.decode_head
    if isinstance(head, FoldedDecodeHead):
        return model
    if model.training:
        raise ModelError("fold the decode head of a model in eval mode (call model.eval() first)")
    if getattr(head.config, "reshape_last_stage", True) is False:
        raise ModelError("decode-head folding needs reshape_last_stage=True")
    n = len(head.linear_projections)
    wf = head.linear_fuse.weight[:, :, 0, 0].double()  # (D, n*D_in) -- concat order is reversed
    d_in = wf.shape[1] // n
    bn = head.batch_norm
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = torch.zeros(wf.shape[0], dtype=torch.float64)
    convs = []
    for i, proj in enumerate(head.linear_projections):
        j = n - 1 - i  # stage i sits at slot j of the concatenation
        wf_i = wf[:, j * d_in:(j + 1) * d_in]
        a = s[:, None] * (wf_i @ proj.proj.weight.double())  # (D, C_i)
        bias += wf_i @ proj.proj.bias.double()
        conv = nn.Conv2d(a.shape[1], a.shape[0], kernel_size=1, bias=(i == 0))
        conv.weight.copy_(a.float()[:, :, None, None])
        convs.append(conv)
    c = s * (bias - bn.running_mean.double()) + bn.bias.double()
    convs[0].bias.copy_(c.float())
    folded = FoldedDecodeHead(convs, head.classifier)
    folded.to(head.classifier.weight.device).eval()
    model.decode_head = folded
    return model


def decode_head_macs(model, height: int, width: int) -> int:
    """Multiply-accumulates of the decode head's convolutions / linears for one input image."""
    head = model.decode_head
    h4, w4 = height // 4, width // 4
    sizes = [(height // (4 * 2 ** i), width // (4 * 2 ** i)) for i in range(4)]
    if isinstance(head, FoldedDecodeHead):
        macs = sum(c.in_channels * c.out_channels * hh * ww for c, (hh, ww) in zip(head.stage_convs, sizes))
    else:
        macs = sum(p.proj.in_features * p.proj.out_features * hh * ww
                   for p, (hh, ww) in zip(head.linear_projections, sizes))
        macs += head.linear_fuse.in_channels * head.linear_fuse.out_channels * h4 * w4
    macs += head.classifier.in_channels * head.classifier.out_channels * h4 * w4
    return int(macs)
