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

import math

import torch
from torch import nn

from .errors import ModelError
from .refiner import (EPS, CheapPass, TorchModule, changed_region, check_warped, hwc_tensor, log_probs,
                      mask_tensor, prev_warped_image, probs_tensor)


LOG_EPS = math.log(EPS)


class STGRU(nn.Module):
    """The STGRU cell on (B, K, h, w) log-probabilities; ``diff`` (B, 3, h, w) in [-255, 255]."""

    def __init__(self, num_classes=20, z_bias=-3.0, kernel=3, gate_classes=False, separable=False):
        super().__init__()
        k = num_classes
        if int(kernel) not in (1, 3, 5):
            raise ModelError(f'STGRU kernel must be 1, 3 or 5, got {kernel!r}')
        self.num_classes = k
        self.kernel = ks = int(kernel)
        self.gate_classes = bool(gate_classes)
        self.separable = bool(separable)
        self.reset = nn.Conv2d(3, 1, 3, padding=1)
        if self.separable:   # depthwise ks x ks + pointwise: ~1/6 of the multiply-adds at ks=3
            self.wx = nn.Sequential(nn.Conv2d(k, k, ks, padding=ks // 2, groups=k, bias=False),
                                    nn.Conv2d(k, k, 1))
            self.wh = nn.Sequential(nn.Conv2d(k, k, ks, padding=ks // 2, groups=k, bias=False),
                                    nn.Conv2d(k, k, 1, bias=False))
            self.wz = nn.Sequential(nn.Conv2d(2 * k + 1, 1, 1), nn.Conv2d(1, 1, ks, padding=ks // 2))
        else:
            self.wx = nn.Conv2d(k, k, ks, padding=ks // 2)
            self.wh = nn.Conv2d(k, k, ks, padding=ks // 2, bias=False)
            self.wz = nn.Conv2d(2 * k + 1, 1, 3, padding=1)
        self.lam = nn.Parameter(torch.ones(()))
        eye = torch.arange(k)
        with torch.no_grad():   # start as plain warping: identity candidate convs, closed update gate
            if self.separable:
                for dw, pw in (self.wx, self.wh):
                    dw.weight.zero_()
                    dw.weight[:, 0, ks // 2, ks // 2] = 1.0
                    pw.weight.zero_()
                    pw.weight[eye, eye, 0, 0] = 1.0
                self.wx[1].bias.zero_()
                self.wz[0].weight.mul_(0.1)
                self.wz[0].bias.zero_()
                self.wz[1].weight.zero_()
                self.wz[1].weight[0, 0, ks // 2, ks // 2] = 1.0
                self.wz[1].bias.fill_(z_bias)
            else:
                for c in (self.wx, self.wh):
                    c.weight.zero_()
                    c.weight[eye, eye, ks // 2, ks // 2] = 1.0
                self.wx.bias.zero_()
                self.wz.weight.mul_(0.1)
                self.wz.bias.fill_(z_bias)
            self.reset.weight.mul_(0.1)
            self.reset.bias.zero_()

    def config(self) -> dict:
        cfg = {'num_classes': self.num_classes}
        if self.kernel != 3:
            cfg['kernel'] = self.kernel
        if self.gate_classes:
            cfg['gate_classes'] = True
        if self.separable:
            cfg['separable'] = True
        return cfg

    def forward(self, w, x, diff, mask=None):
        """w, x: log-probabilities (B, K, h, w); mask: IAM (B, 1, h, w) or None (zeros);
        returns (softmax(h_t), z_t). With ``gate_classes`` the cheap estimate ``x`` is first
        restricted to the classes of the state (:func:`gate_to_state`)."""
        if self.gate_classes:
            x = gate_to_state(x, w)
        r = 1.0 - torch.tanh(torch.abs(self.reset(diff / 255.0)))
        hw = r * w
        h_tilde = self.wx(x) + self.wh(hw)
        if mask is None:
            mask = torch.zeros_like(w[:, :1])
        z = torch.sigmoid(self.wz(torch.cat([x, hw, mask], 1)))
        h = self.lam * (1.0 - z) * w + z * h_tilde
        return torch.softmax(h, 1), z


def gate_to_state(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Restrict the cheap estimate's log-probabilities ``x`` (B, K, h, w) to the classes that are the
    most probable somewhere in the state ``w`` (the warped previous estimate; ties included),
    renormalised.

    The cheap network is small and sees a low-resolution image; on a frame between two keyframes it
    would otherwise bring in classes that the keyframe network does not predict in the scene (e.g.
    'bus' on a truck, BENCHMARKS.md section 7). A class that really enters the view between two
    keyframes is picked up by the next keyframe."""
    present = (w >= w.amax(1, keepdim=True)).flatten(2).any(2)        # (B, K)
    return torch.log_softmax(torch.where(present[:, :, None, None], x, x.new_tensor(LOG_EPS)), 1)


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


__all__ = ['STGRU', 'STGRURefiner', 'CheapPass', 'gate_to_state']
