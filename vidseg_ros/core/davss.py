"""DAVSS: distortion-aware feature correction (Zhuang et al., "Video Semantic Segmentation with
Distortion-Aware Feature Correction", 2020), on the propagated class probabilities.

Two tiny networks at 1/4 of the working resolution:

* distortion map ``D = sigmoid(g([I_t, warp(I_{t-1}), |I_t - warp(I_{t-1})|, max P_warp]))``:
  where the propagated semantics are wrong (trained with binary cross-entropy against the pixels
  where the warped teacher labels disagree with the teacher's labels on the current frame);
* correction ``P_corr = softmax(log P_cheap + f([stem(I_t), log P_warp, log P_cheap]))`` from a
  cheap pass over the current frame (a small network at low resolution, ``refiner.CheapPass``,
  recorded in the weights) + a few convs.

Output ``P = D * P_corr + (1 - D) * P_warp``: only the distorted region is corrected. When no pixel
has D > 0.5 the correction (and its cheap network pass) is skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError
from .refiner import (CheapPass, ImageStem, TorchModule, blend_torch, check_warped, conv,
                      hwc_tensor, image_tensor, log_probs, prev_warped_image, probs_tensor)

SKIP_FRACTION = 0.0


class DistortionNet(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(conv(8, width), nn.ReLU(inplace=True),
                                  conv(width, width, dilation=2), nn.ReLU(inplace=True),
                                  conv(width, 1))
        nn.init.constant_(self.body[-1].bias, -3.0)    # untrained: (almost) no distortion

    def forward(self, cur, prev_w, p_warp):
        """cur, prev_w (B, 3, h, w) in [0, 255]; p_warp (B, K, h, w) -> distortion logits (B, 1, h, w)."""
        a, b = cur / 127.5 - 1.0, prev_w / 127.5 - 1.0
        diff = torch.abs(a - b).mean(1, keepdim=True)
        conf = p_warp.max(1, keepdim=True)[0]
        return self.body(torch.cat([a, b, diff, conf], 1))


class CorrectionNet(nn.Module):
    def __init__(self, num_classes=20, width=32, stem=16):
        super().__init__()
        self.stem = ImageStem(stem)
        self.body = nn.Sequential(conv(stem + 2 * num_classes, width), nn.ReLU(inplace=True),
                                  conv(width, width), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(width, num_classes, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, img_half, p_warp, p_cheap):
        lw, lx = log_probs(p_warp), log_probs(p_cheap)
        f = self.stem(img_half)
        if f.shape[-2:] != p_warp.shape[-2:]:
            f = F.interpolate(f, size=p_warp.shape[-2:], mode='bilinear', align_corners=False)
        return torch.softmax(lx + self.head(self.body(torch.cat([f, lw, lx], 1))), 1)


class DAVSSNet(nn.Module):
    def __init__(self, num_classes=20, width=32, dwidth=16):
        super().__init__()
        self.num_classes, self.width, self.dwidth = num_classes, width, dwidth
        self.distortion = DistortionNet(dwidth)
        self.correction = CorrectionNet(num_classes, width)

    def config(self) -> dict:
        return {'num_classes': self.num_classes, 'width': self.width, 'dwidth': self.dwidth}

    def forward(self, img_half, cur, prev_w, p_warp, p_cheap):
        """Returns (P, D logits, P_corr)."""
        dl = self.distortion(cur, prev_w, p_warp)
        pc = self.correction(img_half, p_warp, p_cheap)
        return blend_torch(torch.sigmoid(dl), pc, p_warp), dl, pc


class DAVSSRefiner(TorchModule):
    """Runtime DAVSS: ``refine`` returns (P, D) with D the predicted distortion map."""

    needs_context = True

    def __init__(self, net: DAVSSNet | None = None, cheap=None, device='cpu'):
        super().__init__(net if net is not None else DAVSSNet(), device)
        if cheap is None:
            raise ModelError('DAVSS needs a cheap per-frame pass (CheapPass.load(spec))')
        self.cheap = cheap
        self.skipped = 0

    def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
        k, hp, wp = check_warped(warped, self.net.num_classes, image, 'DAVSS')
        dev = self.device
        cur, prev_w = prev_warped_image(image, prev_image, flow_bwd, (wp, hp))
        self.calls += 1
        with torch.inference_mode():
            pw = probs_tensor(warped.probs, dev)
            dmap = torch.sigmoid(self.net.distortion(hwc_tensor(cur, dev), hwc_tensor(prev_w, dev), pw))
            region = dmap[0, 0].cpu().numpy()
            if float((region > 0.5).mean()) <= SKIP_FRACTION:
                self.skipped += 1
                return pw[0].cpu().numpy(), region
            pc = self.net.correction(image_tensor(image, (2 * wp, 2 * hp), dev), pw,
                                     probs_tensor(self.cheap(image, (wp, hp)), dev))
            out = blend_torch(dmap, pc, pw)
        return out[0].cpu().numpy(), region


__all__ = ['DAVSSNet', 'DAVSSRefiner', 'DistortionNet', 'CorrectionNet', 'CheapPass']
