"""GRFP: Gated Recurrent Flow Propagation (Nilsson & Sminchisescu, CVPR 2018) with a
Spatio-Temporal GRU (STGRU) on class log-probabilities at the probability grid.

Per frame t (all at 1/4 of the working resolution)::

    w_t  = log warp(P_{t-1}, flow(t, t-1))          # hidden state: previous estimate, flow-warped
    x_t  = log P_cheap(I_t)                         # cheap current estimate (small network, low res)
    e_t  = I_t - warp(I_{t-1}, flow(t, t-1))        # image warping error
    r_t  = 1 - tanh(|conv(e_t)|)                    # reset gate: distrust the warp where e_t is large
    h~_t = conv_x(x_t) + conv_h(r_t * w_t)
    z_t  = sigmoid(conv_z([x_t, r_t * w_t, M_t]))   # update gate (M_t: the IAM, our addition)
    h_t  = lambda * (1 - z_t) * w_t + z_t * h~_t ;   P_t = softmax(h_t)

In the Propagator, ``P_{t-1}`` warped is exactly the warped state (:class:`Semantics`), so the module
is a refiner; it needs I_{t-1} and the flow (``needs_context``; ``temporal.TemporalPropagator``
hands them over). Trained end to end over short sequences (``vidseg train temporal --mode grfp``).
Initialisation (z ~ 0.05, identity convs) starts close to plain warping. The cheap network
(``refiner.CheapPass``, ``NAME@WxH``, default ``refiner.DEFAULT_CHEAP``) is recorded in the weights
and fixed by them (``temporal.load_cheap_pass``).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import ModelError
from .refiner import (CheapPass, TorchModule, changed_region, check_warped, hwc_tensor, log_probs,
                      mask_tensor, prev_warped_image, probs_tensor)


class STGRU(nn.Module):
    """The STGRU cell on (B, K, h, w) log-probabilities; ``diff`` (B, 3, h, w) in [-255, 255]."""

    def __init__(self, num_classes=20, z_bias=-3.0):
        super().__init__()
        k = num_classes
        self.num_classes = k
        self.reset = nn.Conv2d(3, 1, 3, padding=1)
        self.wx = nn.Conv2d(k, k, 3, padding=1)
        self.wh = nn.Conv2d(k, k, 3, padding=1, bias=False)
        self.wz = nn.Conv2d(2 * k + 1, 1, 3, padding=1)
        self.lam = nn.Parameter(torch.ones(()))
        with torch.no_grad():
            for c in (self.wx, self.wh):
                c.weight.zero_()
                c.weight[torch.arange(k), torch.arange(k), 1, 1] = 1.0
            self.wx.bias.zero_()
            self.wz.weight.mul_(0.1)
            self.wz.bias.fill_(z_bias)
            self.reset.weight.mul_(0.1)
            self.reset.bias.zero_()

    def config(self) -> dict:
        return {'num_classes': self.num_classes}

    def forward(self, w, x, diff, mask=None):
        """w, x: log-probabilities (B, K, h, w); mask: IAM (B, 1, h, w) or None (zeros);
        returns (softmax(h_t), z_t)."""
        r = 1.0 - torch.tanh(torch.abs(self.reset(diff / 255.0)))
        hw = r * w
        h_tilde = self.wx(x) + self.wh(hw)
        if mask is None:
            mask = torch.zeros_like(w[:, :1])
        z = torch.sigmoid(self.wz(torch.cat([x, hw, mask], 1)))
        h = self.lam * (1.0 - z) * w + z * h_tilde
        return torch.softmax(h, 1), z


class STGRURefiner(TorchModule):
    """Runtime GRFP: the STGRU over the warped state and a cheap pass of ``cheap`` (a CheapPass or
    a callable ``(image, size_wh) -> probs``). ``refine`` returns (P_t, region where the argmax
    changed)."""

    needs_context = True

    def __init__(self, net: STGRU | None = None, cheap=None, device='cpu'):
        super().__init__(net if net is not None else STGRU(), device)
        if cheap is None:
            raise ModelError('GRFP needs a cheap per-frame estimate (CheapPass.load(spec))')
        self.cheap = cheap

    def refine(self, image, warped, mask, prev_image=None, flow_bwd=None):
        k, hp, wp = check_warped(warped, self.net.num_classes, image, 'GRFP (STGRU)')
        d = self.device
        px = self.cheap(image, (wp, hp))
        cur, prev_w = prev_warped_image(image, prev_image, flow_bwd, (wp, hp))
        with torch.inference_mode():
            pw = probs_tensor(warped.probs, d)
            p, _ = self.net(log_probs(pw), log_probs(probs_tensor(px, d)), hwc_tensor(cur - prev_w, d),
                            mask_tensor(mask, (wp, hp), d))
        self.calls += 1
        out = p[0].cpu().numpy()
        return out, changed_region(out, warped.probs)


__all__ = ['STGRU', 'STGRURefiner', 'CheapPass']
