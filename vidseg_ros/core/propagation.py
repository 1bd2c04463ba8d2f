"""The propagation state machine shared by the offline pipeline and the ROS propagation node.

:class:`Propagator` holds the semantics of the last keyframe carried to the newest frame.

Semantics representation (:class:`Semantics`, what crosses the keyframe -> propagation topic):

* ``labels``: (h, w) uint8 class ids at the *working resolution* (255 = void / unknown);
* ``probs``: (K, h/4, w/4) uint8 class probabilities quantised as ``round(p * 255)``, at a quarter of the
  working resolution (``PROB_FACTOR``; ceil division). Quarter resolution keeps a keyframe message
  small (20 x 256 x 128 bytes = 0.6 MB at 1024x512) while matching the coarse resolution the refiner
  works at. ``K`` = network output planes (e.g. 20 = 19 Cityscapes classes + background);
* ``class_map``: (K,) uint8 plane -> class id (255 = void plane).

The state is always kept in this quantised form (probabilities are warped as uint8 with OpenCV's
fixed-point bilinear remap, and re-quantised after a refinement blend), so a node that receives the
same messages reproduces the offline pipeline bit for bit.

Protocol (per frame, frame ids strictly increasing)::

    prop.set_keyframe(fid, sem)   # optional; may come before step(fid) or LATE (after newer steps)
    out = prop.step(fid, flow_bwd, flow_fwd, image)

``flow_bwd = flow(t, t-1)`` (t's grid) and ``flow_fwd = flow(t-1, t)`` between the previous stepped
frame and this one, at any resolution (resized to the grids used; values rescaled). ``step(..., flow_ref=r)``
says the flows start from frame ``r`` instead (a flow across frames stepped without flow, which were held):
when the state was held since ``r``, the flow lands exactly and the holds no longer degrade the output;
a flow from any other frame marks the state degraded. ``flow_fwd`` enables the IAM; ``image`` (RGB at
working resolution) is needed only by a refiner. A keyframe result that
arrives after newer frames were stepped is re-propagated through the buffered flows (bounded by
``history``) so the state equals what in-order processing would have produced.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np

from .errors import ConfigError, InputError

IGNORE = 255
PROB_FACTOR = 4
IAM_SCALE = 2   # the IAM's checks run at 1/2 of the working resolution (iam.inconsistency_mask ``scale``)

__all__ = ['Semantics', 'FrameOutput', 'Propagator', 'LowResNetworkRefiner', 'Refiner',
           'quantize_probs', 'dequantize_probs', 'prob_size', 'semantics_from_probs',
           'warp_semantics', 'fill_warp_holes', 'confidence_map',
           'semantics_from_segmentation', 'PROB_FACTOR']


def prob_size(working_size_wh, factor: int = PROB_FACTOR) -> tuple:
    """(w, h) of the probability planes for a working resolution (ceil division by ``factor``)."""
    w, h = int(working_size_wh[0]), int(working_size_wh[1])
    return (max(1, -(-w // factor)), max(1, -(-h // factor)))


def quantize_probs(p: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 ``round(p * 255)``."""
    return np.clip(np.rint(np.asarray(p, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantize_probs(q: np.ndarray) -> np.ndarray:
    """uint8 quantised probabilities -> float32 in [0, 1]."""
    return np.asarray(q).astype(np.float32) * (1.0 / 255.0)


def _resize_planes(planes: np.ndarray, size_wh, interpolation) -> np.ndarray:
    """Resize (K, h, w) planes to (K, H, W) (in groups of 4 channels: cv2's INTER_AREA limit)."""
    k = planes.shape[0]
    w, h = int(size_wh[0]), int(size_wh[1])
    if planes.shape[1:] == (h, w):
        return planes
    out = np.empty((k, h, w), planes.dtype)
    for i in range(0, k, 4):
        grp = np.ascontiguousarray(planes[i:i + 4].transpose(1, 2, 0))
        r = cv2.resize(grp, (w, h), interpolation=interpolation)
        out[i:i + 4] = r.reshape(h, w, -1).transpose(2, 0, 1)
    return out


@dataclass
class Semantics:
    """Labels at working resolution + quantised class probabilities at ``PROB_FACTOR`` x lower.
    ``age`` (region refresh only, ``region.RegionRefresher``): frames since each pixel was last
    segmented by the network; None = all fresh (a keyframe). Local state: never sent on a topic.
    ``features`` (feature caching only, ``caching.CachedFeatureRefresher``): the keyframe network's
    cached maps {name: (C, h, w) float32}, warped along with the probabilities (EVS eq. 1-2: labels
    nearest, probabilities and feature maps bilinear)."""

    labels: np.ndarray
    probs: Optional[np.ndarray] = None
    class_map: Optional[np.ndarray] = None
    age: Optional[np.ndarray] = None
    features: Optional[dict] = None

    def __post_init__(self):
        lab = np.asarray(self.labels)
        if lab.ndim != 2 or lab.size == 0:
            raise InputError(f'semantics labels must be a non-empty (h, w) array, got shape {lab.shape}')
        self.labels = np.ascontiguousarray(lab, dtype=np.uint8)
        if self.probs is not None:
            p = np.asarray(self.probs)
            if p.ndim != 3:
                raise InputError(f'semantics probs must be (K, h, w), got shape {p.shape}')
            if p.dtype != np.uint8:
                raise InputError(f'semantics probs must be uint8 quantised (see quantize_probs), got {p.dtype}')
            self.probs = np.ascontiguousarray(p)
            if self.class_map is None:
                self.class_map = np.arange(p.shape[0], dtype=np.uint8)
            cm = np.asarray(self.class_map, dtype=np.uint8).reshape(-1)
            if cm.shape[0] != p.shape[0]:
                raise InputError(f'class_map has {cm.shape[0]} entries but probs have {p.shape[0]} planes')
            self.class_map = cm

    @property
    def size(self) -> tuple:
        """Working resolution (w, h)."""
        return (self.labels.shape[1], self.labels.shape[0])

    def copy(self) -> 'Semantics':
        return Semantics(self.labels.copy(), None if self.probs is None else self.probs.copy(),
                         None if self.class_map is None else self.class_map.copy(),
                         None if self.age is None else self.age.copy(),
                         None if self.features is None else {k: v.copy() for k, v in self.features.items()})

    def probs_labels(self) -> Optional[np.ndarray]:
        """Class ids of the argmax plane at probability resolution (None without probs)."""
        if self.probs is None:
            return None
        return self.class_map[np.argmax(self.probs, axis=0)]

    def max_prob(self) -> Optional[np.ndarray]:
        """Max probability per pixel (float32, probability resolution)."""
        if self.probs is None:
            return None
        return self.probs.max(axis=0).astype(np.float32) * (1.0 / 255.0)


def semantics_from_probs(probs: np.ndarray, class_map, working_size_wh, labels: np.ndarray | None = None,
                         factor: int = PROB_FACTOR) -> Semantics:
    """Build :class:`Semantics` from float softmax planes (K, h, w) at any resolution.

    ``labels`` (class ids, any size) are resized nearest to the working size; without them the argmax of
    bilinearly resized probabilities at working size is used.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise InputError(f'probs must be (K, h, w), got shape {probs.shape}')
    cm = np.asarray(class_map, dtype=np.uint8).reshape(-1)
    w, h = int(working_size_wh[0]), int(working_size_wh[1])
    if labels is None:
        labels = cm[np.argmax(_resize_planes(probs, (w, h), cv2.INTER_LINEAR), axis=0)]
    else:
        labels = np.asarray(labels, dtype=np.uint8)
        if labels.shape != (h, w):
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    ps = prob_size((w, h), factor)
    interp = cv2.INTER_AREA if (probs.shape[2] >= ps[0] and probs.shape[1] >= ps[1]) else cv2.INTER_LINEAR
    pq = quantize_probs(_resize_planes(probs, ps, interp))
    return Semantics(labels, pq, cm)


def semantics_from_segmentation(seg, class_map, working_size_wh, factor: int = PROB_FACTOR) -> Semantics:
    """:class:`Semantics` from a model ``Segmentation`` (``probs`` float softmax, ``labels`` class ids)."""
    return semantics_from_probs(seg.probs, class_map, working_size_wh, labels=getattr(seg, 'labels', None),
                                factor=factor)


def warp_semantics(sem: Semantics, flow, fill_holes: bool = True) -> Semantics:
    """Carry ``sem`` along one flow (EVS eq. 1-2): labels nearest, probabilities and feature maps
    bilinear. ``flow`` is sampled on the *destination* grid and points into ``sem``'s frame (the backward
    flow ``flow(t, t-1)`` to go forward in time; the forward flow ``flow(t, t+1)`` of frame t to carry
    frame t+1's semantics back to t), at any resolution (resized, values rescaled). ``fill_holes``: pixels
    that came from outside the frame take the warped probabilities' argmax instead of void."""
    from .warp import make_remap, warp_labels, warp_probs
    w, h = sem.size
    labels = warp_labels(sem.labels, make_remap(flow, (w, h)))
    probs = None
    if sem.probs is not None:
        probs = warp_probs(sem.probs, make_remap(flow, sem.probs.shape[:0:-1]))
    feats = None
    if sem.features:
        from .warp import warp_features
        feats = {k: warp_features(v, make_remap(flow, (v.shape[2], v.shape[1])))
                 for k, v in sem.features.items()}
    if fill_holes and probs is not None:
        fill_warp_holes(labels, probs, sem.class_map)
    return Semantics(labels, probs, sem.class_map, features=feats)


def fill_warp_holes(labels: np.ndarray, probs: np.ndarray, class_map) -> np.ndarray:
    """In place: pixels of ``labels`` (h, w) that are void (255, a warp sample from outside the frame)
    take the argmax of the probability cell (``probs`` (K, hp, wp), nearest) they fall in, computed at
    those cells only. Returns ``labels``."""
    holes = cv2.findNonZero((labels == IGNORE).view(np.uint8))
    if holes is not None:
        h, w = labels.shape
        holes = holes.reshape(-1, 2)
        xs, ys = holes[:, 0].astype(np.int64), holes[:, 1].astype(np.int64)
        hp, wp = probs.shape[1:]
        px = np.minimum(xs * wp // w, wp - 1)
        py = np.minimum(ys * hp // h, hp - 1)
        labels[ys, xs] = np.asarray(class_map)[np.argmax(probs[:, py, px], axis=0)]
    return labels


def confidence_map(sem: Semantics, scale: float = 1.0, mask=None) -> np.ndarray:
    """Per-pixel confidence at working resolution: the max class probability (bilinearly upsampled; 1
    without probabilities) times ``scale`` (the Propagator's decay with the distance from the keyframe),
    times ``1 - mask`` where an IAM mask is given; 0 on void labels."""
    w, h = sem.size
    mp = sem.max_prob()
    conf = np.ones((h, w), np.float32) if mp is None else cv2.resize(mp, (w, h), interpolation=cv2.INTER_LINEAR)
    if scale != 1.0:
        conf *= scale
    if mask is not None:
        conf *= (1.0 - mask)
    conf[sem.labels == IGNORE] = 0.0
    return conf


@dataclass
class FrameOutput:
    """Result for one frame (labels/confidence at working resolution unless a caller upsampled them).

    ``distance``: frames since the keyframe the labels derive from (0 = keyframe, -1 = none yet).
    ``inconsistent_fraction``: fraction of IAM mask > 0.5 (0.0 when the IAM was not computed).
    ``semantics``: the propagated state (quantised) at this frame. ``timings``: seconds per stage.
    ``lookahead``: two-sided propagation only (``bidirectional.TwoSidedBuffer``): frames to the *later*
    keyframe whose semantics were carried back and fused in (0 = forward propagation only).
    """

    frame_id: object
    labels: np.ndarray
    confidence: np.ndarray
    is_keyframe: bool
    distance: int
    degraded: bool
    inconsistent_fraction: float = 0.0
    keyframe_id: object = None
    mask: Optional[np.ndarray] = None
    semantics: Optional[Semantics] = None
    timings: dict = field(default_factory=dict)
    lookahead: int = 0


Refiner = Callable[[np.ndarray, Semantics, np.ndarray], np.ndarray]
"""refiner(image_rgb_working_res, warped_semantics, iam_mask_working_res) -> float32 probs (K, hp, wp)
on the grid of ``warped_semantics.probs`` with the same plane layout (class_map)."""


class LowResNetworkRefiner:
    """Stand-in refiner (until the learned EVS refiner exists): a cheap low-resolution pass of a keyframe
    network on the current frame. Its softmax planes are resized to the probability grid; the Propagator
    blends them with the warped probabilities through the IAM (EVS eq. 4).

    ``model``: a KeyframeModel (ideally loaded with a small ``input_size``, e.g. 256x128); ``input_size``
    (w, h): the image is area-downscaled to it before the pass when given.
    """

    def __init__(self, model, input_size=None):
        self.model = model
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.calls = 0

    def __call__(self, image: np.ndarray, warped: Semantics, mask: np.ndarray) -> np.ndarray:
        if image is None:
            raise InputError('LowResNetworkRefiner needs the current image')
        img = image
        if self.input_size is not None and img.shape[1::-1] != self.input_size:
            img = cv2.resize(img, self.input_size, interpolation=cv2.INTER_AREA)
        seg = self.model.segment(img)
        self.calls += 1
        probs = np.asarray(seg.probs, dtype=np.float32)
        if warped.probs is not None and probs.shape[0] != warped.probs.shape[0]:
            raise ConfigError(f'refiner network has {probs.shape[0]} outputs, keyframe semantics have '
                              f'{warped.probs.shape[0]} planes')
        size = prob_size(warped.size) if warped.probs is None else warped.probs.shape[:0:-1]
        return _resize_planes(probs, size, cv2.INTER_LINEAR)


class _Entry:
    __slots__ = ('frame_id', 'prev_id', 'flow_bwd', 'flow_fwd', 'image', 'flow_ref')

    def __init__(self, frame_id, prev_id, flow_bwd, flow_fwd, image, flow_ref=None):
        self.frame_id, self.prev_id = frame_id, prev_id
        self.flow_bwd, self.flow_fwd, self.image = flow_bwd, flow_fwd, image
        self.flow_ref = prev_id if flow_ref is None else flow_ref  # the frame the flows start from


def _validate_flow(name, f):
    if f is None:
        return None
    f = np.asarray(f)
    if f.ndim != 3 or f.shape[2] != 2:
        raise InputError(f'{name} must be (h, w, 2), got shape {f.shape}')
    return np.ascontiguousarray(f, dtype=np.float32)


class Propagator:
    """Carry the last keyframe's semantics to the newest frame (see module docstring).

    Parameters: ``warp`` (False: hold labels between keyframes), ``refiner`` (callable, see
    :data:`Refiner`; used where the IAM flags inconsistency, needs ``image`` in :meth:`step`),
    ``use_iam`` (compute the IAM when ``flow_fwd`` is given), ``history`` (max frames whose flows are
    buffered for late keyframes), ``confidence_decay`` (per frame since the keyframe),
    ``max_distance`` (beyond it outputs are flagged degraded; None = never), ``iam_params`` (kwargs of
    ``iam.inconsistency_mask``; default ``scale`` = IAM_SCALE), ``size_wh`` (working size used for outputs before the first keyframe).

    ``stats`` counters: frames, keyframes (received), late_keyframes (applied after newer frames were
    stepped), repropagated_steps, dropped_keyframes_too_old (flows no longer buffered), stale_keyframes
    (older than the current keyframe), orphan_keyframes (for frame ids never stepped), degraded_frames,
    refined_frames, refine_skipped / catch_up_refine_skipped (frames stepped / carried by a late keyframe
    with ``refine=False``), amended_flows.
    """

    def __init__(self, warp: bool = True, refiner: Refiner | None = None, use_iam: bool = True,
                 history: int = 30, confidence_decay: float = 0.97, max_distance: int | None = None,
                 iam_params: dict | None = None, size_wh=None, fill_holes: bool = True):
        if int(history) < 1:
            raise ConfigError(f'history must be >= 1, got {history}')
        if not (0.0 < float(confidence_decay) <= 1.0):
            raise ConfigError(f'confidence_decay must be in (0, 1], got {confidence_decay}')
        if max_distance is not None and int(max_distance) < 0:
            raise ConfigError(f'max_distance must be >= 0 or None, got {max_distance}')
        if refiner is not None and not callable(refiner):
            raise ConfigError('refiner must be callable: refiner(image, warped_semantics, mask) -> probs')
        self.warp = bool(warp)
        self.refiner = refiner
        self.use_iam = bool(use_iam)
        self.history = int(history)
        self.confidence_decay = float(confidence_decay)
        self.max_distance = None if max_distance is None else int(max_distance)
        self.iam_params = {'scale': IAM_SCALE, **(iam_params or {})}
        self.size_wh = None if size_wh is None else (int(size_wh[0]), int(size_wh[1]))
        self.fill_holes = bool(fill_holes)
        self.stats = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything (state, history, pending keyframes); counters restart at 0."""
        self._sem: Semantics | None = None
        self._kf_id = None
        self._dist = -1
        self._newest = None
        self._state_degraded = False
        self._anchor = None     # (frame id the state is exact for, degraded flag there); holds keep it
        self._skip_iam = False  # catch-up: no IAM for frames whose mask nobody reads
        self._skip_refine = False  # step / set_keyframe(refine=False): the plain warp (load shedding)
        self._last_mask = None
        self._last_frac = 0.0
        self._hist: OrderedDict = OrderedDict()
        self._pending: OrderedDict = OrderedDict()
        self.last_timings = {}
        self.stats = dict(frames=0, keyframes=0, late_keyframes=0, repropagated_steps=0,
                          dropped_keyframes_too_old=0, stale_keyframes=0, orphan_keyframes=0,
                          degraded_frames=0, refined_frames=0, refine_skipped=0, catch_up_refine_skipped=0,
                          amended_flows=0)

    @property
    def semantics(self) -> Semantics | None:
        """Current state: semantics at the newest stepped frame (None before the first keyframe)."""
        return self._sem

    @property
    def keyframe_id(self):
        return self._kf_id

    @property
    def newest_frame_id(self):
        return self._newest

    @property
    def distance(self) -> int:
        return self._dist

    # ------------------------------------------------------------------ keyframes
    def set_keyframe(self, frame_id, semantics: Semantics, refine: bool = True) -> str:
        """Register the keyframe network's semantics for ``frame_id``.

        ``refine`` False: a late keyframe is carried to the newest frame with the plain warp (the refiner /
        temporal module is not run on the buffered frames; counted in ``stats['catch_up_refine_skipped']``): the
        ROS node's load shedding when it falls behind the camera.

        Returns what happened: 'pending' (frame not stepped yet: used when ``step(frame_id)`` comes),
        'applied' (frame_id is the newest stepped frame), 'late' (re-propagated through buffered flows
        to the newest frame), 'partial' (no state existed: adopted although some flows were gone;
        missing links are held and the state is flagged degraded), 'dropped' (flows gone and a state
        exists) or 'stale' (not newer than the current keyframe).
        """
        if not isinstance(semantics, Semantics):
            raise InputError(f'set_keyframe expects Semantics, got {type(semantics).__name__}')
        self.stats['keyframes'] += 1
        if self._kf_id is not None and frame_id <= self._kf_id:
            self.stats['stale_keyframes'] += 1
            return 'stale'
        if self._newest is None or frame_id > self._newest:
            self._pending[frame_id] = semantics
            while len(self._pending) > self.history:
                self._pending.popitem(last=False)
                self.stats['orphan_keyframes'] += 1
            return 'pending'
        if frame_id == self._newest:
            self._adopt(frame_id, semantics)
            self._last_mask, self._last_frac = None, 0.0
            return 'applied'
        # Late: frame_id < newest. Chain of stepped frames after frame_id.
        chain = [e for fid, e in self._hist.items() if fid > frame_id]
        complete = bool(chain) and chain[0].prev_id == frame_id
        if not complete and self._sem is not None:
            self.stats['dropped_keyframes_too_old'] += 1
            return 'dropped'
        sem, degraded = semantics, False
        mask, frac = None, 0.0
        if not complete:
            self.stats['dropped_keyframes_too_old'] += 1
            degraded = True
        anchor = (frame_id, degraded)
        # without a refiner the IAM only feeds the newest frame's mask: skip it on the frames in between;
        # so does a refiner that asks for it (``catch_up_newest_only``, region refresh's ``catch_up='newest'``:
        # a network pass per buffered frame, for frames that were published already)
        shed = not refine and self.refiner is not None
        skip = self.refiner is None or shed or bool(getattr(self.refiner, 'catch_up_newest_only', False))
        try:
            self._skip_refine = shed
            for i, e in enumerate(chain):
                self._skip_iam = skip and i < len(chain) - 1
                sem, degraded, anchor, mask, frac = self._carry(sem, degraded, anchor, e)
        finally:
            self._skip_iam = self._skip_refine = False
        if shed:
            self.stats['catch_up_refine_skipped'] += len(chain)
        self.stats['late_keyframes'] += 1
        self.stats['repropagated_steps'] += len(chain)
        self._sem = sem
        self._kf_id = frame_id
        self._dist = len(chain) if complete else max(len(chain), 1)
        self._state_degraded = degraded
        self._anchor = anchor
        self._last_mask, self._last_frac = mask, frac
        return 'late' if complete else 'partial'

    def _adopt(self, frame_id, semantics):
        self._sem = semantics
        self._kf_id = frame_id
        self._dist = 0
        self._state_degraded = False
        self._anchor = (frame_id, False)

    # ------------------------------------------------------------------ stepping
    def step(self, frame_id, flow_bwd=None, flow_fwd=None, image=None, flow_ref=None,
             refine: bool = True) -> FrameOutput:
        """Advance to ``frame_id`` (strictly increasing) and return its output.

        ``flow_bwd``/``flow_fwd``: flows between the previous stepped frame and this one (see module
        docstring); None on the first frame / when unavailable (then the labels are held and, in warp
        mode, flagged degraded). ``flow_ref``: the frame the flows start from when it is not the previous
        stepped frame (a flow across held frames; see the module docstring). None = the previous frame.
        ``refine`` False: the refiner / temporal module is not run on this frame, which gets the plain
        warp (the ROS node's load shedding when it falls behind the camera); counted in
        ``stats['refine_skipped']``. The image is still kept for a late keyframe's catch-up.
        """
        if self._newest is not None and not frame_id > self._newest:
            raise InputError(f'frame ids must increase: got {frame_id!r} after {self._newest!r}')
        flow_bwd = _validate_flow('flow_bwd', flow_bwd)
        flow_fwd = _validate_flow('flow_fwd', flow_fwd)
        if image is not None:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InputError(f'image must be (h, w, 3) uint8 RGB, got {image.shape} {image.dtype}')
        entry = _Entry(frame_id, self._newest, flow_bwd, flow_fwd,
                       image if self.refiner is not None else None, flow_ref)
        self._hist[frame_id] = entry
        while len(self._hist) > self.history:
            self._hist.popitem(last=False)
        self._newest = frame_id
        self.stats['frames'] += 1
        # keyframes that arrived for frames that were skipped can no longer be placed
        for fid in [f for f in self._pending if f < frame_id]:
            del self._pending[fid]
            self.stats['orphan_keyframes'] += 1

        mask, frac = None, 0.0
        self.last_timings = {}
        if frame_id in self._pending:
            self._adopt(frame_id, self._pending.pop(frame_id))
            is_kf = True
        elif self._sem is None:
            return self._no_keyframe_output(frame_id, image, flow_bwd)
        else:
            shed = not refine and self.refiner is not None
            try:
                self._skip_refine = shed
                self._sem, self._state_degraded, self._anchor, mask, frac = self._carry(
                    self._sem, self._state_degraded, self._anchor, entry)
            finally:
                self._skip_refine = False
            self.stats['refine_skipped'] += int(shed)
            self._dist += 1
            is_kf = False
        self._last_mask, self._last_frac = mask, frac
        out = self._output(frame_id, is_kf)
        out.timings.update(self.last_timings)
        return out

    def amend_flow(self, frame_id, flow_bwd, flow_fwd=None, flow_ref=None) -> bool:
        """A flow for ``frame_id`` that arrived after the frame was stepped without one (its labels held).
        When the state was held since the flow's start frame (``flow_ref``, default: the frame stepped
        before it) -- every frame stepped since then had no flow -- the flow is applied now: the state is
        exact at ``frame_id`` (the outputs already returned stay as they were; the history entry keeps the
        flow for late keyframes) and no longer degraded if ``frame_id`` is the newest frame; newer frames
        held after it wait for their own flows, which can be amended the same way. Returns whether it
        was applied."""
        e = self._hist.get(frame_id)
        if e is None or e.flow_bwd is not None or flow_bwd is None or self._sem is None or not self.warp:
            return False
        ref = e.prev_id if flow_ref is None else flow_ref
        if self._anchor is None or self._anchor[0] != ref or not ref < frame_id:
            return False
        if any(x.flow_bwd is not None for f, x in self._hist.items() if f > ref):
            return False  # the state moved on since ``ref``: this flow no longer applies to it
        e.flow_bwd, e.flow_fwd = _validate_flow('flow_bwd', flow_bwd), _validate_flow('flow_fwd', flow_fwd)
        e.flow_ref = ref
        self._sem, mask, frac, deg = self._advance(self._sem, e)
        exact = self._anchor[1] or deg
        self._anchor = (frame_id, exact)
        self._state_degraded = exact if frame_id == self._newest else True
        self._last_mask, self._last_frac = mask, frac
        self.stats['amended_flows'] += 1
        return True

    def current_output(self) -> FrameOutput | None:
        """Output for the newest frame from the current state (e.g. after a late keyframe)."""
        if self._newest is None or self._sem is None:
            return None
        return self._output(self._newest, self._dist == 0)

    def _no_keyframe_output(self, frame_id, image, flow_bwd) -> FrameOutput:
        if self.size_wh is not None:
            w, h = self.size_wh
        elif image is not None:
            h, w = image.shape[:2]
        elif flow_bwd is not None:
            h, w = flow_bwd.shape[:2]
        else:
            h, w = 1, 1
        self.stats['degraded_frames'] += 1
        return FrameOutput(frame_id, np.full((h, w), IGNORE, np.uint8), np.zeros((h, w), np.float32),
                           False, -1, True, 0.0, None, None, None)

    def _output(self, frame_id, is_kf) -> FrameOutput:
        sem = self._sem
        degraded = self._state_degraded or (self.max_distance is not None and self._dist > self.max_distance)
        if degraded:
            self.stats['degraded_frames'] += 1
        return FrameOutput(frame_id, sem.labels, self._confidence(sem, self._last_mask), bool(is_kf),
                           int(self._dist), bool(degraded), float(self._last_frac), self._kf_id,
                           self._last_mask, sem)

    def _confidence(self, sem: Semantics, mask) -> np.ndarray:
        return confidence_map(sem, self.confidence_decay ** max(self._dist, 0), mask)

    def _carry(self, sem, degraded, anchor, e: _Entry):
        """Apply entry ``e`` to the state (sem, degraded, anchor) -> (sem, degraded, anchor, mask, frac).

        ``anchor`` = (frame id the state is exact for, the degraded flag there): held frames (no flow) keep
        it. A flow across held frames (``e.flow_ref != e.prev_id``) that starts at the anchor lands exactly,
        so the degradation the holds added is dropped; one from another frame degrades the state."""
        if self.warp and e.flow_bwd is not None and e.flow_ref != e.prev_id:
            degraded = anchor[1] if anchor is not None and anchor[0] == e.flow_ref else True
        sem, mask, frac, deg = self._advance(sem, e)
        degraded = degraded or deg
        if not deg:
            anchor = (e.frame_id, degraded)
        return sem, degraded, anchor, mask, frac

    def _advance(self, sem: Semantics, e: _Entry):
        """Carry ``sem`` from e.prev_id to e.frame_id. Returns (semantics, mask, fraction, degraded)."""
        if not self.warp:
            return sem, None, 0.0, False
        if e.flow_bwd is None:
            return sem, None, 0.0, True
        tm = self.last_timings = {}
        t0 = time.perf_counter()
        new = warp_semantics(sem, e.flow_bwd, fill_holes=self.fill_holes)
        w, h = sem.size
        tm['warp'] = time.perf_counter() - t0
        mask, frac = None, 0.0
        if self.use_iam and e.flow_fwd is not None and not self._skip_iam:
            t1 = time.perf_counter()
            from .iam import inconsistency_mask
            mask = inconsistency_mask(sem.labels, flow_bwd=e.flow_bwd, flow_fwd=e.flow_fwd,
                                      size_wh=(w, h), **self.iam_params)
            frac = float((mask > 0.5).mean())
            tm['iam'] = time.perf_counter() - t1
        if self.refiner is not None and mask is not None and new.probs is not None and e.image is not None \
                and frac > 0.0 and not self._skip_refine:
            t3 = time.perf_counter()
            new = self._refine(new, mask, e.image)
            self.stats['refined_frames'] += 1
            tm['refine'] = time.perf_counter() - t3
        return new, mask, frac, False

    def _refine(self, warped: Semantics, mask: np.ndarray, image: np.ndarray) -> Semantics:
        from .iam import blend
        w, h = warped.size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        p_ref = np.asarray(self.refiner(image, warped, mask), dtype=np.float32)
        ps = warped.probs.shape[:0:-1]
        if p_ref.shape != warped.probs.shape:
            raise InputError(f'refiner returned probs of shape {p_ref.shape}, expected {warped.probs.shape}')
        m_small = cv2.resize(mask, ps, interpolation=cv2.INTER_AREA)
        blended = blend(m_small, p_ref, warped.probs)
        probs_q = quantize_probs(blended)
        sel = mask > 0.5
        labels = warped.labels.copy()
        if sel.any():
            # argmax at probability resolution, nearest-upsampled (cheap; the refiner's own
            # resolution is no finer than the probability grid)
            lab_ref = warped.class_map[np.argmax(probs_q, axis=0)]
            lab_ref = cv2.resize(lab_ref, (w, h), interpolation=cv2.INTER_NEAREST)
            labels[sel] = lab_ref[sel]
        return Semantics(labels, probs_q, warped.class_map)
