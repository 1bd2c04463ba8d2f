"""ESPNetv2 segmentation network (Mehta et al., CVPR 2019), written from
``shared/models/espnetv2/ARCHITECTURE.md``. Loads the published Cityscapes checkpoints
(Copyright (c) 2021 Sachin Mehta, MIT) with ``strict=True``.

The forward pass is split for feature caching: ``forward_low`` (level1..level3 -> e1, e2, e3)
and ``forward_high`` (level4 + decoder), which accepts cached maps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Width table (C0, C1, C2, C3) per scale s: a lookup, not a formula.
WIDTHS = {0.5: (16, 32, 64, 128), 1.0: (32, 64, 128, 256), 1.5: (32, 96, 192, 384),
          2.0: (32, 128, 256, 512)}
EPP_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
CONTEXT_SCALE = 0.1   # the EPP branch pooled to a 5x5 grid: the frame's global context
EPP_PROJ = 10          # channels of an EPP's branches


def context_grid_shape(h: int, w: int) -> tuple:
    """(gh, gw) of the global (``CONTEXT_SCALE``) branch's pooled grid of an EPP whose input is h x w."""
    return max(math.ceil(h * CONTEXT_SCALE), 5), max(math.ceil(w * CONTEXT_SCALE), 5)


#: the decoder's four EPP modules, coarse to fine, and the names of their context maps
CONTEXT_KEYS = ('ctx1', 'ctx2', 'ctx3', 'ctx4')


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _bins(n_in: int, n_out: int):
    """PyTorch's adaptive pooling bins: output j averages input[start_j:end_j]."""
    return [((j * n_in) // n_out, -((-(j + 1) * n_in) // n_out)) for j in range(n_out)]


def _pool_axis(x: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """Adaptive average pooling along one spatial axis (2 = H, 3 = W) with export-friendly ops:
    a strided / sliding average pool (+ constant gather) when bins are equal, else a matmul."""
    n_in = int(x.shape[dim])
    if n_in == n_out:
        return x
    bins = _bins(n_in, n_out)
    sizes = {b - a for a, b in bins}
    if len(sizes) == 1:
        k = sizes.pop()
        starts = [a for a, _ in bins]
        stride = starts[1] - starts[0] if n_out > 1 else 1
        regular = all(s == j * stride for j, s in enumerate(starts))
        ks = (k, 1) if dim == 2 else (1, k)
        if regular:
            st = (stride, 1) if dim == 2 else (1, stride)
            return F.avg_pool2d(x, ks, st)
        y = F.avg_pool2d(x, ks, 1)
        idx = torch.tensor(starts, dtype=torch.long, device=x.device)
        return torch.index_select(y, dim, idx)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for j, (a, b) in enumerate(bins):
        m[j, a:b] = 1.0 / (b - a)
    m = m.to(dtype=x.dtype, device=x.device)
    return torch.matmul(m, x) if dim == 2 else torch.matmul(x, m.t())


def adaptive_avg_pool(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``; while tracing/exporting it is rebuilt from separable
    average pools (ONNX has no general adaptive pooling)."""
    h, w = int(x.shape[2]), int(x.shape[3])
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        return x
    if not _exporting():
        return F.adaptive_avg_pool2d(x, (oh, ow))
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, (h // oh, w // ow))
    return _pool_axis(_pool_axis(x, oh, 2), ow, 3)


def _resize_ac(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode='bilinear', align_corners=True)


# ---- named-flavour blocks -------------------------------------------------------------
class CBR(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation, groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU(cout)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class CB(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, 1, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BR(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(self.bn(x))


class CDilated(nn.Module):
    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation, groups,
                              bias=False)

    def forward(self, x):
        return self.conv(x)


# ---- sequential-flavour blocks --------------------------------------------------------
class CBRs(nn.Module):
    def __init__(self, cin, cout, k, groups=1):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), nn.PReLU(cout))

    def forward(self, x):
        return self.cbr(x)


class BRs(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x):
        return self.br(x)


class ChannelShuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        g = self.groups
        return x.reshape(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


# ---- units ------------------------------------------------------------------------------
class EESP(nn.Module):
    """EESP unit with k=4 branches and hierarchical feature fusion."""

    def __init__(self, nin, nout, stride=1, r_lim=7):
        super().__init__()
        n = nout // 4
        if n * 4 != nout:
            raise ValueError(f'EESP nOut {nout} not divisible by 4')
        sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(4))
        self.stride = stride
        self.proj_1x1 = CBR(nin, n, 1, groups=4)
        self.spp_dw = nn.ModuleList(CDilated(n, n, 3, stride, (s - 1) // 2, groups=n)
                                    for s in sizes)
        self.conv_1x1_exp = CB(nout, nout, 1, groups=4)
        self.br_after_cat = BR(nout)
        self.module_act = nn.PReLU(nout)

    def forward(self, x):
        t = self.proj_1x1(x)
        b = self.spp_dw[0](t)
        outs = [b]
        for conv in self.spp_dw[1:]:
            b = conv(t) + b
            outs.append(b)
        z = self.conv_1x1_exp(self.br_after_cat(torch.cat(outs, 1)))
        if self.stride == 2:
            return z
        return self.module_act(z + x)


class DownSampler(nn.Module):
    """Strided EESP + average pool, with input-image reinforcement."""

    def __init__(self, nin, nout, r_lim):
        super().__init__()
        self.eesp = EESP(nin, nout - nin, 2, r_lim)
        self.avg = nn.AvgPool2d(3, 2, 1)
        self.inp_reinf = nn.Sequential(CBR(3, 3, 3), CB(3, nout, 1))
        self.act = nn.PReLU(nout)

    def forward(self, x, img):
        a = self.avg(x)
        y = torch.cat([a, self.eesp(x)], 1)
        img = F.avg_pool2d(img, 3, 2, 1)
        while img.shape[2] != a.shape[2]:
            img = F.avg_pool2d(img, 3, 2, 1)
        return self.act(y + self.inp_reinf(img))


class EESPNetBase(nn.Module):
    """ImageNet EESPNet without level5 / classifier (``base_net``)."""

    def __init__(self, width: float):
        super().__init__()
        c0, c1, c2, c3 = WIDTHS[width]
        self.level1 = CBR(3, c0, 3, 2)
        self.level2_0 = DownSampler(c0, c1, 13)
        self.level3_0 = DownSampler(c1, c2, 11)
        self.level3 = nn.ModuleList(EESP(c2, c2, 1, 9) for _ in range(3))
        self.level4_0 = DownSampler(c2, c3, 9)
        self.level4 = nn.ModuleList(EESP(c3, c3, 1, 7) for _ in range(7))


class EPP(nn.Module):
    """Efficient pyramid pooling."""

    def __init__(self, cin, cout, proj=EPP_PROJ, last_layer_br=True):
        super().__init__()
        p = proj
        self.stages = nn.ModuleList(nn.Conv2d(p, p, 3, 1, 1, groups=p, bias=False)
                                    for _ in EPP_SCALES)
        self.projection_layer = CBRs(cin, p, 1)
        self.merge_layer = nn.Sequential(BRs(5 * p), ChannelShuffle(5), CBRs(5 * p, p, 3, groups=p),
                                         nn.Conv2d(p, cout, 1, bias=not last_layer_br))
        if last_layer_br:
            self.br = BRs(cout)
        else:
            self.br = None

    def forward(self, x, context: torch.Tensor | None = None, return_context: bool = False):
        """``context`` replaces the global branch (the smallest pooling scale, ``CONTEXT_SCALE``) by a map
        of this EPP's (h, w) given by the caller: the global branch of a whole frame, cropped to where
        ``x`` lies in it (region refresh with context, ``region.ContextRegionRefresher``). With
        ``return_context`` returns (y, the global branch's pooled grid (B, proj, 5, 5) before its resize)."""
        x = self.projection_layer(x)
        h, w = int(x.shape[2]), int(x.shape[3])
        outs = []
        grid = None
        for s, stage in zip(EPP_SCALES, self.stages):
            hs, ws = max(math.ceil(h * s), 5), max(math.ceil(w * s), 5)
            if s == CONTEXT_SCALE and context is not None:
                y = context
            elif s < 1.0:
                g = stage(adaptive_avg_pool(x, (hs, ws)))
                if s == CONTEXT_SCALE:
                    grid = g
                y = _resize_ac(g, (h, w))
            elif s > 1.0:
                y = adaptive_avg_pool(stage(_resize_ac(x, (hs, ws))), (h, w))
            else:
                y = stage(x)
            outs.append(y)
        y = self.merge_layer(torch.cat(outs, 1))
        if self.br is not None:
            y = self.br(y)
        return (y, grid) if return_context else y


class EPW(nn.Module):
    """Encoder-to-decoder merge: expansion conv gated per channel."""

    def __init__(self, nin, nout):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(nin, nout, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = CBRs(nin, nout, 3, groups=math.gcd(nin, nout))

    def forward(self, x):
        return self.expansion_layer(x) * self.wt_layer(x)


def _up2(x):
    return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)


class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation network; output: raw logits (B, K, H, W); H, W multiples of 16."""

    LOW_KEYS = ('x', 'e1', 'e2', 'e3')

    def __init__(self, width: float = 2.0, num_classes: int = 20):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f'ESPNetv2 width {width} not in {sorted(WIDTHS)}')
        c0, c1, c2, c3 = WIDTHS[width]
        self.width = width
        self.num_classes = num_classes
        self.base_net = EESPNetBase(width)
        self.bu_dec_l1 = EPP(c3, 64)
        self.bu_dec_l2 = EPP(64, 48)
        self.bu_dec_l3 = EPP(48, 32)
        self.bu_dec_l4 = EPP(32, num_classes, last_layer_br=False)
        self.merge_enc_dec_l2 = EPW(c2, 64)
        self.merge_enc_dec_l3 = EPW(c1, 48)
        self.merge_enc_dec_l4 = EPW(c0, 32)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(64), nn.PReLU(64))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(48), nn.PReLU(48))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(32), nn.PReLU(32))

    # -- split forward for feature caching --
    def forward_low(self, x: torch.Tensor, levels: int = 3) -> dict:
        """Low-level part: ``{'x', 'e1', 'e2', 'e3'}`` (``levels`` < 3 stops early)."""
        bn = self.base_net
        out = {'x': x}
        out['e1'] = e = bn.level1(x)
        if levels >= 2:
            out['e2'] = e = bn.level2_0(e, x)
        if levels >= 3:
            out['e3'] = self._level3(e, x)
        return out

    def _level3(self, e2, x):
        e = self.base_net.level3_0(e2, x)
        for m in self.base_net.level3:
            e = m(e)
        return e

    def level4(self, e3: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """e4 = level4_0 + the 7 level4 units (needs the input image for reinforcement)."""
        e = self.base_net.level4_0(e3, x)
        for m in self.base_net.level4:
            e = m(e)
        return e

    def forward_high(self, low: dict, cached: dict | None = None, return_features: bool = False,
                     context: dict | None = None, return_context: bool = False):
        """High-level part (level4 + decoder) -> logits (B, K, H, W).

        ``low`` holds fresh maps from ``forward_low`` ('x', 'e1', 'e2'[, 'e3']). ``cached`` may
        supply maps from an earlier (key)frame that replace computation: 'e3' (caches level3,
        then level4 runs on it unless 'e4' is also given), 'e4' (caches level4) and/or 'd1'
        (the bu_dec_l1 output at H/16). With ``return_features`` returns (logits, maps) where maps
        has every map used (e1..e4, d1..d4) so that the caller can cache them.
        ``context`` ({'ctx1'..'ctx4'}: one map per decoder EPP at its resolution) replaces the EPPs'
        global branches (``EPP.forward``); with ``return_context`` (and not ``return_features``) returns
        (logits, {'ctx1'..'ctx4': the global branches' pooled grids}).
        """
        cached = cached or {}
        grids = {} if return_context else None
        x = low.get('x')
        e1, e2 = low['e1'], low['e2']
        maps = {'e1': e1, 'e2': e2}
        d1 = cached.get('d1')
        e3 = cached.get('e3', low.get('e3'))
        if e3 is None:
            e3 = self._level3(e2, x)
        maps['e3'] = e3
        if d1 is None:
            e4 = cached.get('e4')
            if e4 is None:
                if x is None:
                    raise ValueError("forward_high needs low['x'] to compute level4")
                e4 = self.level4(e3, x)
            maps['e4'] = e4
            d1 = self._epp(self.bu_dec_l1, e4, 'ctx1', context, grids)
        maps['d1'] = d1
        d = self._epp(self.bu_dec_l2, self.bu_br_l2(_up2(d1) + self.merge_enc_dec_l2(e3)), 'ctx2', context, grids)
        maps['d2'] = d
        d = self._epp(self.bu_dec_l3, self.bu_br_l3(_up2(d) + self.merge_enc_dec_l3(e2)), 'ctx3', context, grids)
        maps['d3'] = d
        d = self._epp(self.bu_dec_l4, self.bu_br_l4(_up2(d) + self.merge_enc_dec_l4(e1)), 'ctx4', context, grids)
        maps['d4'] = d
        h, w = (int(x.shape[2]), int(x.shape[3])) if x is not None else \
            (2 * int(e1.shape[2]), 2 * int(e1.shape[3]))
        out = _resize_ac(d, (h, w))
        if return_features:
            return out, maps
        if return_context:
            return out, grids
        return out

    @staticmethod
    def _epp(epp, x, key, context, grids):
        ctx = None if context is None else context.get(key)
        if grids is None:
            return epp(x, context=ctx)
        y, grids[key] = epp(x, context=ctx, return_context=True)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_high(self.forward_low(x))


def infer_config(state: dict) -> dict | None:
    """Architecture parameters (width, num_outputs) from an ESPNetv2 state dict, or None."""
    k1 = 'base_net.level2_0.inp_reinf.1.conv.weight'
    if 'base_net.level1.conv.weight' not in state or k1 not in state:
        return None
    c0 = state['base_net.level1.conv.weight'].shape[0]
    c1 = state[k1].shape[0]
    width = next((s for s, w in WIDTHS.items() if w[0] == c0 and w[1] == c1), None)
    if width is None:
        return None
    out = state.get('bu_dec_l4.merge_layer.3.weight')
    return {'width': width, 'num_outputs': int(out.shape[0]) if out is not None else None}


def num_outputs_of(state: dict) -> int | None:
    w = state.get('bu_dec_l4.merge_layer.3.weight')
    return int(w.shape[0]) if w is not None and w.ndim == 4 else None
