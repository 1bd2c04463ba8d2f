"""ESPNet (v1) segmentation network (Mehta et al., ECCV 2018), written from
``shared/models/espnet/ARCHITECTURE.md``. Loads the published checkpoints
(Copyright (c) 2018 Sachin Mehta, MIT) with ``strict=True``.

Variants: 'test' (Cityscapes, ``test/Model.py``: last CBR sees the raw level1 output) and
'train' (CamVid, ``train/Model.py``: last CBR sees the b1 output). All BN use eps=1e-3.
"""
from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3


def _bn(c):
    return nn.BatchNorm2d(c, eps=BN_EPS)


class CBR(nn.Module):
    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)
        self.bn = _bn(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = _bn(c)
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(self.bn(x))


class C(nn.Module):
    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)

    def forward(self, x):
        return self.conv(x)


class CDilated(nn.Module):
    def __init__(self, cin, cout, k, d=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, (k - 1) // 2 * d, dilation=d, bias=False)

    def forward(self, x):
        return self.conv(x)


class InputProjectionA(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, 2, 1) for _ in range(m))

    def forward(self, x):
        for p in self.pool:
            x = p(x)
        return x


class _ESPBranches(nn.Module):
    """Shared d1..d16 branches + hierarchical sums."""

    def _branches(self, nout):
        n = nout // 5
        n1 = nout - 4 * n
        self.d1 = CDilated(n, n1, 3, 1)
        self.d2 = CDilated(n, n, 3, 2)
        self.d4 = CDilated(n, n, 3, 4)
        self.d8 = CDilated(n, n, 3, 8)
        self.d16 = CDilated(n, n, 3, 16)
        return n

    def _esp(self, t):
        a1 = self.d2(t)
        a2 = a1 + self.d4(t)
        a3 = a2 + self.d8(t)
        a4 = a3 + self.d16(t)
        return torch.cat([self.d1(t), a1, a2, a3, a4], 1)


class DownSamplerB(_ESPBranches):
    def __init__(self, nin, nout):
        super().__init__()
        n = nout // 5
        self.c1 = C(nin, n, 3, 2)
        self._branches(nout)
        self.bn = _bn(nout)
        self.act = nn.PReLU(nout)

    def forward(self, x):
        return self.act(self.bn(self._esp(self.c1(x))))


class DilatedParllelResidualBlockB(_ESPBranches):
    def __init__(self, nin, nout, add=True):
        super().__init__()
        n = nout // 5
        self.c1 = C(nin, n, 1, 1)
        self._branches(nout)
        self.bn = BR(nout)
        self.add = add

    def forward(self, x):
        y = self._esp(self.c1(x))
        if self.add:
            y = x + y
        return self.bn(y)


class ESPNetEncoder(nn.Module):
    """ESPNet-C."""

    def __init__(self, classes, p, q):
        super().__init__()
        self.level1 = CBR(3, 16, 3, 2)
        self.sample1 = InputProjectionA(1)
        self.sample2 = InputProjectionA(2)
        self.b1 = BR(16 + 3)
        self.level2_0 = DownSamplerB(16 + 3, 64)
        self.level2 = nn.ModuleList(DilatedParllelResidualBlockB(64, 64) for _ in range(p))
        self.b2 = BR(128 + 3)
        self.level3_0 = DownSamplerB(128 + 3, 128)
        self.level3 = nn.ModuleList(DilatedParllelResidualBlockB(128, 128) for _ in range(q))
        self.b3 = BR(256)
        self.classifier = C(256, classes, 1, 1)


class ESPNetSeg(nn.Module):
    """ESPNet with decoder; output raw logits (B, K, H, W); H, W multiples of 8."""

    def __init__(self, num_classes=20, p=2, q=8, variant='test'):
        super().__init__()
        if variant not in ('test', 'train'):
            raise ValueError(f"ESPNet variant must be 'test' or 'train', got {variant!r}")
        k = num_classes
        self.variant = variant
        self.num_classes = k
        self.encoder = ESPNetEncoder(k, p, q)
        self.level3_C = C(128 + 3, k, 1, 1)
        self.br = _bn(k)
        self.conv = CBR((16 if variant == 'test' else 19) + k, k, 3, 1)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(k, k, 2, 2, 0, 0, bias=False))
        self.combine_l2_l3 = nn.Sequential(BR(2 * k), DilatedParllelResidualBlockB(2 * k, k, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(k, k, 2, 2, 0, 0, bias=False), BR(k))
        self.classifier = nn.ConvTranspose2d(k, k, 2, 2, 0, 0, bias=False)

    def forward_features(self, x: torch.Tensor) -> dict:
        """All named maps: o0, o0c, o1c, o2c (encoder) and logits."""
        enc = self.encoder
        o0 = enc.level1(x)
        o0c = enc.b1(torch.cat([o0, enc.sample1(x)], 1))
        o10 = enc.level2_0(o0c)
        o1 = o10
        for m in enc.level2:
            o1 = m(o1)
        o1c = enc.b2(torch.cat([o1, o10, enc.sample2(x)], 1))
        o20 = enc.level3_0(o1c)
        o2 = o20
        for m in enc.level3:
            o2 = m(o2)
        o2c = enc.b3(torch.cat([o20, o2], 1))
        u3 = self.up_l3(self.br(enc.classifier(o2c)))
        p2 = self.level3_C(o1c)
        u2 = self.up_l2(self.combine_l2_l3(torch.cat([p2, u3], 1)))
        skip = o0 if self.variant == 'test' else o0c
        out = self.classifier(self.conv(torch.cat([u2, skip], 1)))
        return {'o0': o0, 'o0c': o0c, 'o1c': o1c, 'o2c': o2c, 'logits': out}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)['logits']


def infer_config(state: dict) -> dict | None:
    """(p, q, num_outputs, variant) from an ESPNet state dict, or None."""
    if 'encoder.level1.conv.weight' not in state or 'classifier.weight' not in state:
        return None
    p = len({k.split('.')[2] for k in state if k.startswith('encoder.level2.')})
    q = len({k.split('.')[2] for k in state if k.startswith('encoder.level3.')})
    k = int(state['classifier.weight'].shape[0])
    cw = state.get('conv.conv.weight')
    variant = 'train' if cw is not None and cw.shape[1] == 19 + k else 'test'
    return {'p': p, 'q': q, 'num_outputs': k, 'variant': variant}


def num_outputs_of(state: dict) -> int | None:
    w = state.get('classifier.weight')
    return int(w.shape[0]) if w is not None and w.ndim == 4 else None
