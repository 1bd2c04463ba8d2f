"""EVS eq. 3-4: inconsistency attention mask (IAM) and the blend of refined and warped probabilities.

Flows follow docs/DESIGN.md: ``flow_bwd = flow(t, t-1)`` on t's grid (t(x) ~= t-1(x + f_bwd(x))),
``flow_fwd = flow(t-1, t)`` on t-1's grid. Both are keyword arguments of :func:`inconsistency_mask`
so a swapped order cannot go unnoticed.

Label check (EVS): ``L_t = warp(L_{t-1}, f_bwd)``; ``L_back = warp(L_t, f_fwd)`` on t-1's grid; pixels
where ``L_back != L_{t-1}`` are inconsistent (this flags pixels that get occluded / change label); the
map is carried to t's grid (along f_bwd and in place) and t pixels whose source lies outside t-1's
frame are added. Flow check: ``|f_bwd(x) + f_fwd(x + f_bwd(x))| > thr + rel * (|f_bwd| + |f_fwd(..)|)``
(flags disoccluded pixels, whose propagated label is wrong, and unreliable flow); 'both' = union.
Default 'labels': on Cityscapes snippets (DIS fast, 1024x512, pseudo labels) it flags ~8% of the pixels
and covers ~65% of the propagation errors; the flow check adds little recall for twice the area.
Then dilation (square ``dilate`` px) and Gaussian blur (``blur`` sigma px) -> M in [0, 1].
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .flow import resize_flow
from .warp import IGNORE, make_remap

__all__ = ['inconsistency_mask', 'flow_inconsistency', 'label_inconsistency', 'smooth_mask', 'blend',
           'inconsistent_fraction']


def label_inconsistency(labels_prev: np.ndarray, flow_bwd: np.ndarray, flow_fwd: np.ndarray,
                        size_wh=None) -> np.ndarray:
    """Binary (bool) EVS label round-trip inconsistency on t's grid at ``size_wh`` (default: labels size).

    ``L_t = warp(L_{t-1}, f_bwd)``, ``L_back = warp(L_t, f_fwd)`` (t-1 grid), ``bad = L_back != L_{t-1}``.
    ``bad`` is carried to t's grid both in place (same camera pixel) and along ``f_bwd`` (the pixel t
    takes its label from), and t pixels whose source lies outside t-1's frame are added.
    """
    labels_prev = np.asarray(labels_prev)
    if labels_prev.ndim != 2:
        raise InputError(f'labels_prev must be (h, w), got shape {labels_prev.shape}')
    if labels_prev.dtype != np.uint8:
        labels_prev = labels_prev.astype(np.uint8)
    hp, wp = labels_prev.shape
    rm_b = make_remap(flow_bwd, (wp, hp))        # t grid (at labels' size) -> samples in t-1
    rm_f = make_remap(flow_fwd, (wp, hp))        # t-1 grid -> samples in t
    nearest, const = cv2.INTER_NEAREST, cv2.BORDER_CONSTANT
    lab_t = cv2.remap(labels_prev, rm_b.map_x, rm_b.map_y, nearest, borderMode=const, borderValue=IGNORE)
    back = cv2.remap(lab_t, rm_f.map_x, rm_f.map_y, nearest, borderMode=const, borderValue=IGNORE)
    bad_prev = (back != labels_prev).view(np.uint8)
    bad_t = cv2.remap(bad_prev, rm_b.map_x, rm_b.map_y, nearest, borderMode=const, borderValue=1)
    # in place only where the t-1 pixel stays in the frame (pixels leaving the view do not matter at t)
    left = cv2.remap(np.zeros_like(labels_prev), rm_f.map_x, rm_f.map_y, nearest, borderMode=const,
                     borderValue=1)
    bad = bad_t | (bad_prev & (1 - left))
    if size_wh is not None and tuple(size_wh) != (wp, hp):
        bad = cv2.resize(bad, (int(size_wh[0]), int(size_wh[1])), interpolation=cv2.INTER_NEAREST)
    return bad.astype(bool)


def flow_inconsistency(flow_bwd: np.ndarray, flow_fwd: np.ndarray, thr: float = 1.0,
                       rel: float = 0.05) -> np.ndarray:
    """Binary forward-backward flow check on flow_bwd's grid (``thr`` in its pixels); out-of-frame is bad."""
    fb = np.ascontiguousarray(flow_bwd, dtype=np.float32)
    h, w = fb.shape[:2]
    ff = resize_flow(flow_fwd, (w, h))
    rm = make_remap(fb)
    ff_s = cv2.remap(ff, rm.map_x, rm.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    bx, by = cv2.split(fb)
    fx, fy = cv2.split(ff_s)
    err = cv2.magnitude(bx + fx, by + fy)
    lim = cv2.magnitude(bx, by)
    lim += cv2.magnitude(fx, fy)
    lim *= float(rel)
    lim += float(thr)
    bad = err > lim
    bad |= (rm.map_x < -0.5) | (rm.map_x > w - 0.5) | (rm.map_y < -0.5) | (rm.map_y > h - 0.5)
    return bad


def smooth_mask(bad: np.ndarray, dilate: int = 5, blur: float = 2.0) -> np.ndarray:
    """Dilate a binary mask with a ``dilate`` x ``dilate`` square and Gaussian-blur it -> float32 [0, 1]
    (blurred in 8 bit for speed: values are multiples of 1/255)."""
    m = np.asarray(bad).astype(np.uint8)
    if dilate and int(dilate) > 1:
        k = int(dilate)
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    if blur and float(blur) > 0:
        m *= 255
        m = cv2.GaussianBlur(m, (0, 0), float(blur), borderType=cv2.BORDER_REPLICATE)
        return m.astype(np.float32) * np.float32(1.0 / 255.0)
    return m.astype(np.float32)


IAM_MODES = ('both', 'labels', 'flow')


def inconsistency_mask(labels_prev, *, flow_bwd, flow_fwd, dilate: int = 5, blur: float = 2.0,
                       mode: str = 'labels', thr: float = 4.0, rel: float = 0.1,
                       size_wh=None, scale: int = 1) -> np.ndarray:
    """IAM M in [0, 1] (float32) on t's grid; 1 = the propagated labels are not trustworthy.

    ``mode``: 'labels' (EVS label round trip; flags occluded/label-changing pixels; default), 'flow'
    (forward-backward flow check, ``thr`` in pixels of the output grid, ``rel`` relative to the flow
    magnitudes; flags disoccluded pixels and bad flow; ``labels_prev`` may be None) or 'both' (union).
    Output size: ``size_wh`` if given, else the labels' size (or flow_bwd's size without labels).
    ``scale`` > 1: the checks run at 1/scale of the output size (labels subsampled nearest; ``dilate``,
    ``blur`` and ``thr`` scaled alike) and the smooth mask is upsampled bilinearly: the mask is dilated and
    blurred anyway, and the flow it checks is coarser still (DIS's native grid), so this saves ~3/4 of the
    cost for a mask that differs only along its edges.
    """
    if flow_bwd is None or flow_fwd is None:
        raise InputError('inconsistency_mask needs both flow_bwd and flow_fwd')
    if mode not in IAM_MODES:
        raise ConfigError(f"unknown IAM mode {mode!r} (known: {', '.join(IAM_MODES)})")
    fb = np.asarray(flow_bwd, dtype=np.float32)
    if size_wh is None:
        size_wh = np.asarray(labels_prev).shape[1::-1] if labels_prev is not None else fb.shape[1::-1]
    size_wh = (int(size_wh[0]), int(size_wh[1]))
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f'IAM scale must be >= 1, got {scale}')
    if scale > 1:
        small = (max(1, -(-size_wh[0] // scale)), max(1, -(-size_wh[1] // scale)))
        lp = None if labels_prev is None else cv2.resize(np.asarray(labels_prev, dtype=np.uint8), small,
                                                          interpolation=cv2.INTER_NEAREST)
        m = inconsistency_mask(lp, flow_bwd=fb, flow_fwd=flow_fwd, dilate=max(1, int(round(dilate / scale))) | 1,
                               blur=float(blur) / scale, mode=mode, thr=float(thr) / scale, rel=rel,
                               size_wh=small)
        return cv2.resize(m, size_wh, interpolation=cv2.INTER_LINEAR)
    bad = None
    if mode in ('labels', 'both'):
        if labels_prev is None:
            raise InputError(f"inconsistency_mask(mode='{mode}') needs labels_prev")
        bad = label_inconsistency(labels_prev, fb, flow_fwd, size_wh)
    if mode in ('flow', 'both'):
        # checked on flow_bwd's own grid (cheap for native-resolution flows), thr converted to its pixels
        fh, fw = fb.shape[:2]
        if fw > size_wh[0] or fh > size_wh[1]:
            fb, fw, fh = resize_flow(fb, size_wh), size_wh[0], size_wh[1]
        fbad = flow_inconsistency(fb, flow_fwd, thr=thr * fw / size_wh[0], rel=rel)
        if (fw, fh) != size_wh:
            fbad = cv2.resize(fbad.view(np.uint8), size_wh, interpolation=cv2.INTER_NEAREST).astype(bool)
        bad = fbad if bad is None else (bad | fbad)
    return smooth_mask(bad, dilate, blur)


def blend(mask: np.ndarray, p_refined: np.ndarray, p_warped: np.ndarray) -> np.ndarray:
    """EVS eq. 4: ``M * P_ref + (1 - M) * P_warp`` for (K, h, w) planes and an (h, w) mask -> float32.

    uint8 / uint16 quantised planes are scaled to [0, 1] first."""
    def f(p):
        p = np.asarray(p)
        if p.dtype == np.uint8:
            return p.astype(np.float32) * (1.0 / 255.0)
        if p.dtype == np.uint16:
            return p.astype(np.float32) * (1.0 / 65535.0)
        return p.astype(np.float32, copy=False)
    m = np.asarray(mask, dtype=np.float32)
    pr, pw = f(p_refined), f(p_warped)
    if pr.shape != pw.shape or pr.shape[-2:] != m.shape:
        raise InputError(f'blend: shapes differ: mask {m.shape}, refined {pr.shape}, warped {pw.shape}')
    sel = m > 0
    n = int(np.count_nonzero(sel))
    if n > 0.3 * m.size:
        out = pr - pw
        out *= m
        out += pw
        return out
    out = np.array(pw, dtype=np.float32, copy=True)
    if n:
        mv = m[sel]
        pwv = out[..., sel]
        out[..., sel] = pwv + mv * (pr[..., sel] - pwv)
    return out


def inconsistent_fraction(mask: np.ndarray, thr: float = 0.5) -> float:
    """Fraction of pixels whose mask value exceeds ``thr`` (a keyframe-trigger statistic)."""
    m = np.asarray(mask)
    return float((m > thr).mean()) if m.size else 0.0
