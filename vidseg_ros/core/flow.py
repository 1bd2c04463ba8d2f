"""Dense optical flow (OpenCV DIS presets, Farneback; DeepFlow and RLOF where OpenCV's contrib modules are
installed), flow resizing/composition, EPE and .flo I/O.

Convention (docs/DESIGN.md): ``flow = estimator(a, b)`` is float32 ``(h, w, 2)`` on the grid of ``a``
with ``a(x) ~= b(x + flow(x))``; displacements are in pixels of the grid the field is stored on.
OpenCV's ``calc(prev, next)`` already follows it (``prev(x) ~= next(x + flow)``), so
``flow(a, b) = calc(a, b)``.

Native resolution: DIS estimates the field down to pyramid level ``finest_scale`` (image downscaled by
``2**finest_scale``) and only bilinearly upsamples it to full size. :meth:`FlowEstimator.compute_native`
returns the field at that coarse size by running DIS with ``finest_scale=0`` on the image area-downscaled
by ``2**finest_scale`` (the same INTER_AREA pyramid DIS builds internally, so the same coarse-level
computation, minus the full-size upsampling). Measured on the 6 FlyingChairs pairs (512x384): it differs
from the area-downsampled full-size output by 0.02-0.06 px (native pixels), its upsampled EPE equals the
full-size EPE (medium 3.93, fast 3.84, ultrafast 4.15) and it is cheaper (ultrafast 1.5 vs 3.5 ms).
This is what a flow topic should carry.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError, InputError

FLO_MAGIC = 202021.25

_DIS_PRESETS = {
    'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
    'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# explicit DIS parameter name -> OpenCV setter
_DIS_SETTERS = {
    'finest_scale': 'setFinestScale',
    'coarsest_scale': 'setCoarsestScale',
    'patch_size': 'setPatchSize',
    'patch_stride': 'setPatchStride',
    'grad_descent_iterations': 'setGradientDescentIterations',
    'variational_refinement_iterations': 'setVariationalRefinementIterations',
    'alpha': 'setVariationalRefinementAlpha',
    'gamma': 'setVariationalRefinementGamma',
    'delta': 'setVariationalRefinementDelta',
    'epsilon': 'setVariationalRefinementEpsilon',
    'use_mean_normalization': 'setUseMeanNormalization',
    'use_spatial_propagation': 'setUseSpatialPropagation',
}
_FARNEBACK_DEFAULTS = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=3, poly_n=5,
                           poly_sigma=1.2, flags=0)
# Slower, classical alternatives from OpenCV's contrib modules (``cv2.optflow``; the package
# opencv-contrib-python-headless, not a dependency of this project). They are there to measure whether
# a better CPU flow than DIS would change what propagation can do (BENCHMARKS.md 8.1), not for the
# real-time path: DeepFlow (Weinzaepfel et al. 2013, variational with deep matching-style descriptors)
# and dense RLOF (robust local flow on a grid, EPIC edge-aware interpolation; colour input).
CONTRIB_METHODS = ('deepflow', 'rlof')
METHODS = ('dis', 'farneback') + CONTRIB_METHODS


def contrib_available() -> bool:
    """Whether this OpenCV has the contrib flow module (``cv2.optflow``) the :data:`CONTRIB_METHODS` need."""
    return hasattr(cv2, 'optflow') and hasattr(cv2.optflow, 'createOptFlow_DeepFlow')


def to_gray(img: np.ndarray) -> np.ndarray:
    """RGB/RGBA/gray uint8 -> contiguous gray uint8 (h, w)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise InputError(f'flow input must be uint8, got {img.dtype}')
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        return np.ascontiguousarray(img[..., 0])
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_RGBA2GRAY)
    raise InputError(f'flow input must be (h,w), (h,w,3) or (h,w,4) uint8, got shape {img.shape}')


def to_rgb(img: np.ndarray) -> np.ndarray:
    """RGB/RGBA/gray uint8 -> contiguous 3-channel uint8 (h, w, 3) (gray is repeated)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 4 and img.dtype == np.uint8:
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(to_gray(img), cv2.COLOR_GRAY2RGB)


class FlowEstimator:
    """Dense flow between two frames: ``est(a, b)`` -> (h, w, 2) float32 with ``a(x) ~= b(x + f(x))``.

    ``method``: 'dis' (OpenCV DIS with ``preset`` 'ultrafast'|'fast'|'medium', overridable by explicit
    parameters, e.g. ``finest_scale=1, patch_stride=3``) or 'farneback' (params ``pyr_scale, levels,
    winsize, iterations, poly_n, poly_sigma, flags``); 'deepflow' and 'rlof' (no parameters) need
    OpenCV's contrib modules (:func:`contrib_available`). ``scale`` < 1 computes on the area-downscaled
    images and returns the field at the reduced size (values in reduced-size pixels).
    One estimator is not thread-safe (OpenCV's DIS object keeps buffers): use one per thread.
    """

    def __init__(self, method: str = 'dis', preset: str = 'medium', scale: float = 1.0, **params):
        self.method = str(method).lower()
        self.preset = str(preset).lower() if preset is not None else None
        if not (0.0 < float(scale) <= 1.0):
            raise ConfigError(f'flow scale must be in (0, 1], got {scale}')
        self.scale = float(scale)
        self.params = dict(params)
        if self.method == 'dis':
            if self.preset not in _DIS_PRESETS:
                raise ConfigError(f'unknown DIS preset {preset!r} (known: {", ".join(_DIS_PRESETS)})')
            unknown = set(self.params) - set(_DIS_SETTERS)
            if unknown:
                raise ConfigError(f'unknown DIS parameter(s) {sorted(unknown)} (known: {sorted(_DIS_SETTERS)})')
            self._dis = self._make_dis(self.params)
            self.finest_scale = int(self._dis.getFinestScale())
            native = dict(self.params, finest_scale=0)
            self._dis_native = self._make_dis(native)
        elif self.method == 'farneback':
            unknown = set(self.params) - set(_FARNEBACK_DEFAULTS)
            if unknown:
                raise ConfigError(f'unknown Farneback parameter(s) {sorted(unknown)} '
                                  f'(known: {sorted(_FARNEBACK_DEFAULTS)})')
            self._fb = dict(_FARNEBACK_DEFAULTS, **self.params)
            self.finest_scale = 0
        elif self.method in CONTRIB_METHODS:
            if not contrib_available():
                raise ConfigError(f"flow method {self.method!r} needs OpenCV's contrib modules (cv2.optflow), which "
                                  f'this OpenCV ({cv2.__version__}) lacks: install opencv-contrib-python-headless of '
                                  f'the same version in place of opencv-python-headless')
            if self.params:
                raise ConfigError(f'flow method {self.method!r} takes no parameters, got {sorted(self.params)}')
            if self.method == 'deepflow':
                self._contrib = cv2.optflow.createOptFlow_DeepFlow()
            self.finest_scale = 0
        else:
            raise ConfigError(f'unknown flow method {method!r} (known: {", ".join(METHODS)})')

    def _make_dis(self, params):
        dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[self.preset])
        for k, v in params.items():
            getattr(dis, _DIS_SETTERS[k])(bool(v) if k.startswith('use_') else
                                          (float(v) if k in ('alpha', 'gamma', 'delta', 'epsilon') else int(v)))
        return dis

    def describe(self) -> dict:
        """Parameters as a plain dict (for logs / JSON)."""
        d = {'method': self.method, 'scale': self.scale}
        if self.method == 'dis':
            d['preset'] = self.preset
            dis = self._dis
            d.update(finest_scale=dis.getFinestScale(), patch_size=dis.getPatchSize(),
                     patch_stride=dis.getPatchStride(),
                     grad_descent_iterations=dis.getGradientDescentIterations(),
                     variational_refinement_iterations=dis.getVariationalRefinementIterations())
            if self.params:
                d['params'] = dict(self.params)
        elif self.method == 'farneback':
            d.update(self._fb)
        return d

    def _prepare(self, a, b, factor: float):
        ga, gb = (to_rgb(a), to_rgb(b)) if self.method == 'rlof' else (to_gray(a), to_gray(b))
        if ga.shape != gb.shape:
            raise InputError(f'flow inputs differ in size: {ga.shape[::-1]} vs {gb.shape[::-1]}')
        if factor != 1.0:
            h, w = ga.shape
            size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
            ga = cv2.resize(ga, size, interpolation=cv2.INTER_AREA)
            gb = cv2.resize(gb, size, interpolation=cv2.INTER_AREA)
        return ga, gb

    def _calc(self, ga, gb, dis) -> np.ndarray:
        if self.method == 'dis':
            try:
                flow = dis.calc(ga, gb, None)
            except cv2.error:
                # tiny images: DIS's pyramid cannot reach finest_scale; retry at full resolution
                try:
                    flow = self._dis_native.calc(ga, gb, None)
                except cv2.error:
                    raise InputError(f'images of {ga.shape[1]}x{ga.shape[0]} are too small for DIS flow '
                                     f'(patch size {dis.getPatchSize()})') from None
        elif self.method == 'deepflow':
            flow = self._contrib.calc(ga, gb, None)
        elif self.method == 'rlof':
            flow = cv2.optflow.calcOpticalFlowDenseRLOF(ga, gb, None, interp_type=cv2.optflow.INTERP_EPIC)
        else:
            p = self._fb
            flow = cv2.calcOpticalFlowFarneback(ga, gb, None, p['pyr_scale'], int(p['levels']),
                                                int(p['winsize']), int(p['iterations']), int(p['poly_n']),
                                                p['poly_sigma'], int(p['flags']))
        return np.ascontiguousarray(flow, dtype=np.float32)

    def __call__(self, a, b) -> np.ndarray:
        ga, gb = self._prepare(a, b, self.scale)
        return self._calc(ga, gb, getattr(self, '_dis', None))

    def compute_native(self, a, b) -> np.ndarray:
        """Field at the resolution its information has: DIS at ``scale / 2**finest_scale``
        (``finest_scale=0`` on the area-downscaled pair); Farneback: same as ``__call__``."""
        if self.method != 'dis' or self.finest_scale == 0:
            return self(a, b)
        ga, gb = self._prepare(a, b, self.scale / (2 ** self.finest_scale))
        try:
            return self._calc(ga, gb, self._dis_native)
        except InputError:  # too small at the coarse size: compute at full size and area-downsample
            return resize_flow(self(a, b), ga.shape[::-1])

    def native_size(self, size_wh) -> tuple:
        """(w, h) of :meth:`compute_native`'s output for input frames of size ``size_wh``."""
        f = self.scale / (2 ** self.finest_scale) if self.method == 'dis' else self.scale
        w, h = size_wh
        return (max(1, int(round(w * f))), max(1, int(round(h * f)))) if f != 1.0 else (int(w), int(h))

    def forward_backward(self, a, b, native: bool = False):
        """(flow(a, b), flow(b, a)): forward on a's grid, backward on b's grid (``native``: at the
        :meth:`compute_native` resolution). The inputs are converted / downscaled once."""
        if native and self.method == 'dis' and self.finest_scale > 0:
            ga, gb = self._prepare(a, b, self.scale / (2 ** self.finest_scale))
            try:
                return self._calc(ga, gb, self._dis_native), self._calc(gb, ga, self._dis_native)
            except InputError:
                return self.compute_native(a, b), self.compute_native(b, a)
        ga, gb = self._prepare(a, b, self.scale)
        dis = getattr(self, '_dis', None)
        return self._calc(ga, gb, dis), self._calc(gb, ga, dis)


def resize_flow(flow: np.ndarray, size_wh, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Resize a flow field to ``(w, h)`` and rescale its values to pixels of the new grid."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f'flow must be (h, w, 2), got shape {flow.shape}')
    w, h = int(size_wh[0]), int(size_wh[1])
    fh, fw = flow.shape[:2]
    if (w, h) == (fw, fh):
        return flow
    if interpolation == cv2.INTER_LINEAR and w <= fw and h <= fh:
        interpolation = cv2.INTER_AREA
    out = cv2.resize(flow, (w, h), interpolation=interpolation)
    out[..., 0] *= w / fw
    out[..., 1] *= h / fh
    return out


def flow_to_map(flow: np.ndarray):
    """Absolute sampling coordinates ``(map_x, map_y)`` = grid + flow, float32 (for cv2.remap)."""
    h, w = flow.shape[:2]
    map_x = flow[..., 0] + np.arange(w, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(h, dtype=np.float32)[:, None]
    return map_x, map_y


def compose_flows(f_t_to_s: np.ndarray, f_s_to_k: np.ndarray) -> np.ndarray:
    """``f_t->k(x) = f_t->s(x) + f_s->k(x + f_t->s(x))`` on t's grid (fields resized to t's grid first;
    samples outside s's frame use the nearest border value)."""
    f_ts = np.asarray(f_t_to_s, dtype=np.float32)
    h, w = f_ts.shape[:2]
    f_sk = resize_flow(f_s_to_k, (w, h))
    mx, my = flow_to_map(f_ts)
    return f_ts + cv2.remap(f_sk, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def endpoint_error(flow: np.ndarray, gt: np.ndarray, valid=None) -> float:
    """Mean end-point error ||flow - gt|| over valid pixels (``valid`` bool mask; also skips non-finite gt)."""
    flow = np.asarray(flow, dtype=np.float32)
    gt = np.asarray(gt, dtype=np.float32)
    if flow.shape != gt.shape:
        raise InputError(f'flow shape {flow.shape} != ground truth shape {gt.shape}')
    err = np.sqrt(((flow - gt) ** 2).sum(axis=2))
    mask = np.isfinite(err) & (np.abs(gt) < 1e9).all(axis=2)
    if valid is not None:
        mask &= np.asarray(valid, dtype=bool)
    if not mask.any():
        raise InputError('endpoint_error: no valid pixels')
    return float(err[mask].mean())


def read_flo(path) -> np.ndarray:
    """Read a Middlebury .flo file -> (h, w, 2) float32."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f'flow file not found: {path}')
    data = path.read_bytes()
    if len(data) < 12:
        raise InputError(f'{path}: too short for a .flo file')
    magic, w, h = struct.unpack('<fii', data[:12])
    if abs(magic - FLO_MAGIC) > 1e-3:
        raise InputError(f'{path}: bad .flo magic {magic} (expected {FLO_MAGIC})')
    n = 2 * w * h
    if w <= 0 or h <= 0 or len(data) < 12 + 4 * n:
        raise InputError(f'{path}: truncated .flo ({w}x{h} declared, {len(data)} bytes)')
    return np.frombuffer(data, dtype='<f4', count=n, offset=12).reshape(h, w, 2).astype(np.float32)


def write_flo(path, flow: np.ndarray) -> None:
    """Write (h, w, 2) flow as a Middlebury .flo file."""
    flow = np.asarray(flow, dtype='<f4')
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f'flow must be (h, w, 2), got shape {flow.shape}')
    h, w = flow.shape[:2]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(struct.pack('<fii', FLO_MAGIC, w, h))
        f.write(np.ascontiguousarray(flow).tobytes())


def flow_to_color(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """Visualise flow as RGB uint8: hue = direction, saturation = magnitude / max_mag (default: max)."""
    flow = np.asarray(flow, dtype=np.float32)
    mag, ang = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    mag = np.nan_to_num(mag)
    if max_mag is None:
        max_mag = float(mag.max()) if mag.size else 1.0
    max_mag = max(float(max_mag), 1e-6)
    hsv = np.empty(flow.shape[:2] + (3,), dtype=np.uint8)
    hsv[..., 0] = (np.nan_to_num(ang) / 2).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / max_mag * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
