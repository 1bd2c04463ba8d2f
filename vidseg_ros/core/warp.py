"""EVS eq. 1-2: carry labels / probabilities / features / images from frame t-1 to frame t.

``flow`` is the backward flow ``flow(t, t-1)`` on t's grid (docs/DESIGN.md): output pixel ``x`` takes the
value of the source at ``x + flow(x)``. Flow and data may have different sizes: the flow is resized to
the data's grid with its values rescaled, and the output is on the data's grid. For several warps with
the same flow build the maps once with :func:`make_remap` and pass the :class:`Remap` instead of the flow.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .flow import flow_to_map, resize_flow

IGNORE = 255


@dataclass
class Remap:
    """Precomputed sampling maps for one flow at one output size ``(w, h)``: float32 absolute source
    coordinates (OpenCV 5's float-map remap is faster here than fixed-point maps)."""

    map_x: np.ndarray
    map_y: np.ndarray

    @property
    def size(self) -> tuple:
        return (self.map_x.shape[1], self.map_x.shape[0])


def make_remap(flow: np.ndarray, size_wh=None) -> Remap:
    """Sampling maps for ``flow`` on an output grid of ``size_wh`` (default: the flow's size).

    Upsampling (DIS's native field to the working resolution, every propagated frame): the absolute
    coordinates are formed at the flow's resolution and resized once. Bilinear resizing reproduces the
    linear grid exactly except where it clamps at the borders, which is corrected per border column /
    row, so the maps equal ``flow_to_map(resize_flow(flow, size_wh))`` (to float rounding) at a
    fraction of the cost (measured 0.5 against 1.5-6 ms at 1024x512: no full-size arithmetic)."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f'flow must be (h, w, 2), got shape {flow.shape}')
    flow = np.asarray(flow, dtype=np.float32)
    fh, fw = flow.shape[:2]
    w, h = (fw, fh) if size_wh is None else (int(size_wh[0]), int(size_wh[1]))
    if (w, h) == (fw, fh) or w < fw or h < fh:
        mx, my = flow_to_map(resize_flow(flow, (w, h)))
        return Remap(mx, my)
    sx, sy = w / fw, h / fh
    gx, gy = flow_to_map(flow)
    # cv2.resize maps source u to destination x = s * u + (s - 1) / 2; one plane at a time (cv2.split of
    # a resized 2-channel map measured 7 ms here)
    mx = cv2.resize(gx * np.float32(sx) + np.float32((sx - 1) / 2), (w, h), interpolation=cv2.INTER_LINEAR)
    my = cv2.resize(gy * np.float32(sy) + np.float32((sy - 1) / 2), (w, h), interpolation=cv2.INTER_LINEAR)
    ex, ey = _border_error(w, fw), _border_error(h, fh)
    for i in ex:
        mx[:, i] -= ex[i]
    for j in ey:
        my[j, :] -= ey[j]
    return Remap(mx, my)


def _border_error(n: int, m: int) -> dict:
    """{index: error} of the linear grid resized from m to n samples, where cv2.resize clamps the source
    coordinate (first / last few output pixels); empty when nothing clamps."""
    s = n / m
    out = {}
    for i in list(range(min(n, int(np.ceil(s)) + 1))) + list(range(max(0, n - int(np.ceil(s)) - 1), n)):
        u = (i + 0.5) / s - 0.5
        uc = min(max(u, 0.0), m - 1.0)
        if uc != u:
            out[i] = np.float32(s * uc + (s - 1) / 2 - i)
    return out


def _border(name: str) -> int:
    modes = {'replicate': cv2.BORDER_REPLICATE, 'zero': cv2.BORDER_CONSTANT}
    if name not in modes:
        raise ConfigError(f'unknown border mode {name!r} (known: replicate, zero)')
    return modes[name]


def _as_remap(flow_or_remap, size_wh) -> Remap:
    if isinstance(flow_or_remap, Remap):
        if flow_or_remap.size != tuple(size_wh):
            raise InputError(f'remap maps are {flow_or_remap.size[0]}x{flow_or_remap.size[1]} but the data is '
                             f'{size_wh[0]}x{size_wh[1]}: build them with make_remap(flow, size_wh)')
        return flow_or_remap
    return make_remap(flow_or_remap, size_wh)


def warp_labels(labels: np.ndarray, flow) -> np.ndarray:
    """Nearest-neighbour warp of a uint8 label map (h, w); samples outside the frame become 255."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f'labels must be (h, w), got shape {labels.shape}')
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    rm = _as_remap(flow, labels.shape[::-1])
    return cv2.remap(labels, rm.map_x, rm.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=IGNORE)


def _remap_planes(data: np.ndarray, rm: Remap, border: int, value=0) -> np.ndarray:
    """Bilinear remap of (K, h, w) planes one by one (measured faster than interleaving into
    4-channel chunks, whose transposes cost more than they save)."""
    k = data.shape[0]
    out = np.empty_like(data)
    for i in range(k):
        cv2.remap(data[i], rm.map_x, rm.map_y, cv2.INTER_LINEAR, dst=out[i], borderMode=border,
                  borderValue=value)
    return out


def warp_probs(probs: np.ndarray, flow, border: str = 'replicate') -> np.ndarray:
    """Bilinear warp of per-class planes (K, h, w), float32 or uint8/uint16 quantised (dtype kept).

    ``border``: 'replicate' (default, DESIGN.md) or 'zero'.
    """
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3:
        raise InputError(f'probs must be (K, h, w), got shape {probs.shape}')
    if probs.dtype not in (np.float32, np.uint8, np.uint16):
        probs = probs.astype(np.float32)
    probs = np.ascontiguousarray(probs)
    rm = _as_remap(flow, probs.shape[:0:-1])
    mode = _border(border)
    return _remap_planes(probs, rm, mode)


def warp_image(img: np.ndarray, flow, border: str = 'replicate') -> np.ndarray:
    """Bilinear warp of an (h, w) or (h, w, C) image (any cv2 dtype); output on the image's grid."""
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise InputError(f'image must be (h, w) or (h, w, C), got shape {img.shape}')
    rm = _as_remap(flow, img.shape[1::-1])
    mode = _border(border)
    if img.ndim == 3 and img.shape[2] > 4:
        return np.ascontiguousarray(_remap_planes(np.ascontiguousarray(img.transpose(2, 0, 1)), rm, mode)
                                    .transpose(1, 2, 0))
    out = cv2.remap(np.ascontiguousarray(img), rm.map_x, rm.map_y, cv2.INTER_LINEAR, borderMode=mode)
    return out.reshape(img.shape)


def warp_features(feat, flow, mode: str = 'bilinear', padding_mode: str = 'border'):
    """Warp a (B, C, h, w) torch tensor (or (C, h, w) / numpy array) with ``torch.grid_sample``.

    ``flow``: (h', w', 2) numpy/torch field, or (B, h', w', 2) per-batch fields; resized to (h, w).
    Returns the same type as ``feat`` (numpy in -> numpy out).
    """
    import torch
    import torch.nn.functional as F

    is_numpy = isinstance(feat, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(feat)) if is_numpy else feat
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f'features must be (B, C, h, w) or (C, h, w), got shape {tuple(x.shape)}')
    b, _, h, w = x.shape
    if isinstance(flow, Remap):
        if flow.size != (w, h):
            raise InputError(f'remap maps are {flow.size} but features are {(w, h)}')
        grid = torch.from_numpy(np.stack([flow.map_x, flow.map_y], axis=-1))[None]
    else:
        fl = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
        fls = fl[None] if fl.ndim == 3 else fl
        if fls.ndim != 4 or fls.shape[-1] != 2:
            raise InputError(f'flow must be (h, w, 2) or (B, h, w, 2), got shape {fl.shape}')
        grid = torch.from_numpy(np.stack([np.stack(flow_to_map(resize_flow(f, (w, h))), axis=-1)
                                          for f in fls]))
    grid = grid.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    # pixel coordinates -> [-1, 1] with align_corners=True (index 0 -> -1, index w-1 -> +1)
    sx = 2.0 / max(w - 1, 1)
    sy = 2.0 / max(h - 1, 1)
    grid = torch.stack([grid[..., 0] * sx - 1.0, grid[..., 1] * sy - 1.0], dim=-1)
    if grid.shape[0] == 1 and b > 1:
        grid = grid.expand(b, -1, -1, -1)
    xin = x if x.is_floating_point() else x.float()
    out = F.grid_sample(xin, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if squeeze:
        out = out[0]
    return out.numpy() if is_numpy else out
