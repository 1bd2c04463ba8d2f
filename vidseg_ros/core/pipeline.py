"""In-process keyframe video segmentation (``vidseg run``): model + flow + schedule + Propagator.

Per frame (RGB uint8, any size):

1. the frame is area-downscaled to the *working resolution* (input / D);
2. the schedule decides keyframe or not (the adaptive schedule sees the IAM inconsistent fraction of
   the previous propagated frame);
3. keyframe: the network segments the full frame (resized to its input size by the model) and its
   softmax becomes the Propagator's :class:`~vidseg_ros.core.propagation.Semantics` (labels at working
   resolution, uint8 probabilities at a quarter of it);
   otherwise: backward and forward DIS flow between the previous and the current working frame
   (computed at DIS's native coarse resolution, exactly what the ROS flow node publishes) and the
   Propagator warps (W), computes the IAM and refines (R);
4. labels are upsampled (nearest) to the input resolution. ``confidence`` stays at working resolution.

``out.timings`` holds seconds per stage: flow, keyframe (network), warp, iam, refine, upsample, total.
A change of the input resolution resets the state and forces a keyframe. NaN/Inf network outputs
are set to void and counted (``nonfinite_pixels``); a keyframe whose output is mostly non-finite is
rejected and counted (``rejected_keyframes``) and the frame is propagated from the previous state.
A frame whose flow cannot be computed (frames too small for DIS) keeps the previous labels, flagged
degraded and counted (``flow_failures``, ``flow_error``), as a missing flow does in the ROS graph.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .propagation import (FrameOutput, LowResNetworkRefiner, Propagator, Semantics,
                          semantics_from_segmentation)
from .schedule import OperatingPoint, Schedule, make_schedule

__all__ = ['VideoSegmenter', 'working_size', 'default_flow', 'STAGES', 'make_low_res_refiner',
           'FAR_APART_FRACTION', 'far_apart_warning', 'frames_far_apart', 'fraction_stats', 'scale_for_network']

log = logging.getLogger(__name__)

STAGES = ('flow', 'keyframe', 'warp', 'iam', 'refine', 'upsample', 'total')

# Median IAM inconsistent fraction of the propagated frames above which the frames are too far apart in
# time for propagation (an image set, not a video). Measured with the default model and flow (``python -m
# vidseg_ros.core.spacing_bench``, BENCHMARKS.md section 4, "Frames far apart"): driving video at 17-25 Hz
# 0.04-0.11 (the Udacity clips, the Cityscapes snippets); the synthetic drive of the demo at 10 Hz 0.21;
# the snippets at 3.4 Hz 0.24; the CamVid image sets, one frame a second of their drives, 0.35-0.36.
# A 10 Hz camera (KITTI's rate) must not warn, hence the threshold above the 10 Hz drive and below 1 Hz.
FAR_APART_FRACTION = 0.25
FAR_APART_MIN_FRAMES = 5


def fraction_stats(fractions) -> Optional[dict]:
    """frames / median / mean / p90 of IAM inconsistent fractions (None without any)."""
    f = [float(v) for v in fractions]
    if not f:
        return None
    return {'frames': len(f), 'median': float(np.median(f)), 'mean': float(np.mean(f)),
            'p90': float(np.percentile(f, 90))}


def frames_far_apart(stats: Optional[dict]) -> bool:
    """Were the propagated frames of ``stats`` (``fraction_stats``) mostly inconsistent under the flow: a
    median above FAR_APART_FRACTION over at least FAR_APART_MIN_FRAMES frames? Frames seconds apart, a
    slideshow, shuffled images, a camera far slower than the scene moves: warping carries labels onto
    the wrong content there."""
    return bool(stats) and stats.get('frames', 0) >= FAR_APART_MIN_FRAMES and stats['median'] > FAR_APART_FRACTION


def far_apart_warning(stats: Optional[dict], schedule: Optional[dict] = None) -> Optional[str]:
    """``vidseg run``'s one-line warning when ``frames_far_apart(stats)`` (``VideoSegmenter.summary()
    ['inconsistent_fraction']``); None when the input looks like video or there is nothing to judge
    (no propagated frame with an IAM)."""
    if not frames_far_apart(stats):
        return None
    adaptive = (schedule or {}).get('type') == 'adaptive'
    advice = ('--interval 1 (every frame a keyframe)' if adaptive else
              '--schedule adaptive (a keyframe where the flow fails) or --interval 1 (every frame a keyframe)')
    return (f'warning: the labels failed the flow\'s forward-backward check (IAM) on {100 * stats["median"]:.0f} % '
            f'of the median propagated frame ({stats["frames"]} frames; driving video at 10-25 Hz: 4-21 %, '
            f'one frame a second: 35 %): these frames are too far apart in time for propagated labels; '
            f'use {advice}')


def scale_for_network(size_wh, input_wh) -> int:
    """``--scale auto``: the smallest downscale D in 1, 2, 4, 8, 16 that brings frames of ``size_wh`` within
    the keyframe network's input size ``input_wh`` (16 beyond)."""
    for d in (1, 2, 4, 8, 16):
        if size_wh[0] / d <= input_wh[0] * 1.001 and size_wh[1] / d <= input_wh[1] * 1.001:
            return d
    return 16


def working_size(size_wh, scale: int) -> tuple:
    """Working resolution (w, h) for an input of ``size_wh`` and downscale factor D (rounded, >= 8 px)."""
    w, h = int(size_wh[0]), int(size_wh[1])
    try:
        d = int(scale)
    except (TypeError, ValueError):
        d = 0
    if d < 1 or d != scale:
        raise ConfigError(f'scale (the downscale D) must be an integer >= 1, got {scale!r}')
    return (max(8, int(round(w / d))), max(8, int(round(h / d))))


def default_flow(preset: str = 'ultrafast'):
    """The propagation flow: DIS ``preset`` (ultrafast by default: ~6 ms per field at 1024x512)."""
    from .flow import FlowEstimator
    return FlowEstimator('dis', preset=preset)


def make_low_res_refiner(model, factor: int = 4) -> LowResNetworkRefiner:
    """:class:`LowResNetworkRefiner` running the keyframe network at 1/``factor`` of its input size
    (rounded to multiples of 16). Loads a second copy of the network at that size (the registry's
    checkpoint trained at that resolution when one exists, e.g. ``espnetv2_s2.0_512x256``); a model
    that cannot be re-loaded is reused as is on the downscaled image."""
    w, h = model.input_size
    size = (max(16, int(round(w / factor / 16)) * 16), max(16, int(round(h / factor / 16)) * 16))
    low = None
    try:
        from .models import REGISTRY, load_model
        name = model.config.name
        cand = f'{name}_{size[0]}x{size[1]}'
        device = getattr(model, 'device', 'cpu')
        # torch backend: no one-off ONNX export for this small second copy
        if cand in REGISTRY:
            low = load_model(cand, device=device, backend='torch')
        else:
            low = load_model(name, weights=getattr(model, 'weights', None), device=device,
                             input_size=size, backend='torch')
    except Exception:  # noqa: BLE001 - any model that cannot be re-loaded: reuse it on a small image
        low = None
    if low is None:
        return LowResNetworkRefiner(model, input_size=size)
    return LowResNetworkRefiner(low)


class VideoSegmenter:
    """Keyframe video segmentation of a frame stream (see module docstring).

    ``model``: a KeyframeModel. ``op``: OperatingPoint (D, S, W, R; default per-frame).
    ``flow``: a FlowEstimator (default DIS ultrafast). ``schedule``: a Schedule or spec (default: the
    op's). ``refiner``: a Refiner callable (default when ``op.refine``: :func:`make_low_res_refiner`).
    ``native_flow``: compute flow at DIS's native coarse resolution (as the ROS flow node does).
    ``keyframe_fn(frame_index, rgb) -> Segmentation | Semantics`` and ``flow_fn(frame_index, prev_work, work) ->
    (flow_bwd, flow_fwd)`` replace the network / flow calls (benchmarks use them to share cached
    results across operating points).
    """

    def __init__(self, model, op: Optional[OperatingPoint] = None, flow=None, schedule=None,
                 refiner=None, use_iam: bool = True, history: int = 30, confidence_decay: float = 0.97,
                 native_flow: bool = True, keyframe_fn: Optional[Callable] = None,
                 flow_fn: Optional[Callable] = None, iam_params: Optional[dict] = None):
        self.model = model
        self.op = op if op is not None else OperatingPoint('per_frame', 1, 1, True, False)
        if not isinstance(self.op, OperatingPoint):
            raise ConfigError(f'op must be an OperatingPoint, got {type(self.op).__name__}')
        self.flow = flow if flow is not None else default_flow()
        self.schedule: Schedule = make_schedule(schedule) if schedule is not None else self.op.make_schedule()
        if self.op.refine and refiner is None:
            refiner = make_low_res_refiner(model)
        self.refiner = refiner if self.op.refine else None
        self.use_iam = bool(use_iam)
        self.native_flow = bool(native_flow)
        self.keyframe_fn = keyframe_fn
        self.flow_fn = flow_fn
        self.class_map = np.asarray(model.output_to_class, np.uint8)
        # two-sided propagation (bidirectional.TwoSidedSegmenter) also needs flow(t-1, t) at keyframes
        self.flows_at_keyframes = False
        self.keyframe_flow_pair = True    # with flows_at_keyframes: the backward field too (two-sided trust)
        self.last_flows = (None, None)   # (flow_bwd, flow_fwd) between the previous frame and this one
        self.propagator = Propagator(warp=self.op.warp, refiner=self.refiner, use_iam=self.use_iam,
                                     history=history, confidence_decay=confidence_decay,
                                     iam_params=iam_params)
        self._time_sum = {k: 0.0 for k in STAGES}
        self._time_n = {'keyframe': 0, 'propagated': 0}
        self._kf_total = 0.0
        self._prop_total = 0.0
        self.resets = 0
        self.rejected_keyframes = 0   # keyframes whose network output was mostly NaN/Inf
        self.nonfinite_pixels = 0     # NaN/Inf output pixels set to void in accepted keyframes
        self.inconsistent_fractions = []   # IAM fraction of every propagated frame (far_apart_warning)
        self.flow_failures = 0      # frames whose flow could not be computed (labels held, degraded)
        self.flow_error = None      # ... the first such error
        self.reset()
        self.resets = 0

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop all state: the next frame is a keyframe (also called on a resolution change)."""
        self.propagator.reset()
        self.schedule.reset()
        self._prev_work = None
        self._size = None
        self._work_size = None
        self.frame_index = 0
        self._last_frac = None
        self.resets += 1

    def set_schedule(self, spec) -> None:
        """Switch the keyframe schedule at run time (the next frame is a keyframe)."""
        self.schedule = make_schedule(spec)

    # ------------------------------------------------------------------ processing
    def _flows(self, idx, prev, cur):
        if self.flow_fn is not None:
            return self.flow_fn(idx, prev, cur)
        fn = self._flow_field
        bwd = fn(cur, prev)
        fwd = fn(prev, cur) if ((self.use_iam or self.flows_at_keyframes) and self.op.warp) else None
        return bwd, fwd

    @property
    def _flow_field(self):
        """flow(a, b) -> one field: DIS at its native resolution (as the ROS flow node) or upsampled."""
        return self.flow.compute_native if self.native_flow else self.flow

    def _flow_failed(self, idx, exc) -> None:
        """A frame whose flow cannot be computed (images too small for DIS, ...): counted, the first one
        logged; the frame goes on without flow (labels held and flagged degraded, like a missing flow in
        the ROS graph), never an abort."""
        self.flow_failures += 1
        if self.flow_error is None:
            self.flow_error = str(exc)
            log.warning('frame %d: no flow (%s); labels held from the previous frame (degraded)', idx, exc)

    def _keyframe_semantics(self, idx, rgb, ws) -> Semantics | None:
        """The keyframe network's semantics for this frame, NaN/Inf outputs sanitised (void, counted);
        None when the output is unusable (the keyframe is rejected: the frame is propagated instead)."""
        seg = self.keyframe_fn(idx, rgb) if self.keyframe_fn is not None else self.model.segment(rgb)
        if seg is None or isinstance(seg, Semantics):   # None: keyframe_fn rejected it
            return seg
        from .models.base import sanitize_segmentation
        try:
            seg, bad = sanitize_segmentation(seg)
        except InputError as exc:
            self.rejected_keyframes += 1
            log.warning('frame %d: keyframe rejected (%s); propagating the previous semantics', idx, exc)
            return None
        if bad:
            self.nonfinite_pixels += bad
            log.warning('frame %d: %d pixels with non-finite network outputs set to void', idx, bad)
        return semantics_from_segmentation(seg, self.class_map, ws)

    def process(self, rgb: np.ndarray, stamp: float | None = None) -> FrameOutput:
        """Segment the next frame; returns labels at the input resolution (see module docstring)."""
        t0 = time.perf_counter()
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f'expected an RGB uint8 image (H, W, 3), got '
                             f'{getattr(rgb, "shape", type(rgb).__name__)} {getattr(rgb, "dtype", "")}')
        size = (rgb.shape[1], rgb.shape[0])
        if self._size is not None and size != self._size:
            self.reset()
        if self._size is None:
            self._size = size
            self._work_size = working_size(size, self.op.scale)
        idx = self.frame_index
        self.frame_index += 1
        ws = self._work_size
        work = rgb if ws == size else cv2.resize(rgb, ws, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
        stats = {'timestamp': stamp}
        if self._last_frac is not None:
            stats['inconsistent_fraction'] = self._last_frac
        is_kf = self.schedule.is_keyframe(idx, stats)
        timings = {}
        prop = self.propagator
        sem = None
        if is_kf:
            t1 = time.perf_counter()
            sem = self._keyframe_semantics(idx, rgb, ws)
            timings['keyframe'] = time.perf_counter() - t1
            is_kf = sem is not None
        self.last_flows = (None, None)
        if is_kf:
            if self.flows_at_keyframes and self._prev_work is not None:
                # both fields into the keyframe: the forward one carries it back (two-sided), the pair
                # gives that link's forward-backward check (bidirectional.link_checks)
                t1 = time.perf_counter()
                try:
                    if self.flow_fn is not None:
                        self.last_flows = tuple(self.flow_fn(idx, self._prev_work, gray))
                    else:
                        fn = self._flow_field
                        self.last_flows = (fn(gray, self._prev_work) if self.keyframe_flow_pair else None,
                                           fn(self._prev_work, gray))
                except InputError:   # no link into this keyframe: two-sided fusion carries nothing back
                    self.last_flows = (None, None)   # across it (its frames go out forward-only, counted there)
                timings['flow'] = time.perf_counter() - t1
            prop.set_keyframe(idx, sem)
            out = prop.step(idx, None, None, None)
            self._last_frac = None
        else:
            bwd = fwd = None
            if self.op.warp:
                t1 = time.perf_counter()
                try:
                    bwd, fwd = self._flows(idx, self._prev_work, gray)
                except InputError as exc:   # e.g. frames too small for DIS: labels held (degraded), as in ROS
                    self._flow_failed(idx, exc)
                timings['flow'] = time.perf_counter() - t1
                self.last_flows = (bwd, fwd)
            out = prop.step(idx, bwd, fwd, work if self.refiner is not None else None)
            self._last_frac = out.inconsistent_fraction if out.mask is not None else None
            if self._last_frac is not None and self.op.warp:
                self.inconsistent_fractions.append(float(self._last_frac))
        timings.update(out.timings)
        self._prev_work = gray
        t2 = time.perf_counter()
        if ws != size:
            out.labels = cv2.resize(out.labels, size, interpolation=cv2.INTER_NEAREST)
        timings['upsample'] = time.perf_counter() - t2
        timings['total'] = time.perf_counter() - t0
        out.timings = timings
        self.schedule.observe(is_kf, timings['total'])
        for k in STAGES:
            self._time_sum[k] += timings.get(k, 0.0)
        self._time_n['keyframe' if is_kf else 'propagated'] += 1
        if is_kf:
            self._kf_total += timings['total']
        else:
            self._prop_total += timings['total']
        return out

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict:
        """Counts and mean seconds per stage (over all frames) and per frame kind."""
        n = sum(self._time_n.values())
        nk, npr = self._time_n['keyframe'], self._time_n['propagated']
        mean = {k: (v / n if n else None) for k, v in self._time_sum.items()}
        return {
            'frames': n, 'keyframes': nk, 'propagated': npr,
            'mean_s': mean,
            'mean_keyframe_s': self._kf_total / nk if nk else None,
            'mean_propagated_s': self._prop_total / npr if npr else None,
            'fps': (n / self._time_sum['total']) if self._time_sum['total'] > 0 else None,
            'operating_point': self.op.to_dict(),
            'schedule': self.schedule.to_dict(),
            'propagator': dict(self.propagator.stats),
            'resets': self.resets,
            'rejected_keyframes': self.rejected_keyframes,
            'nonfinite_pixels': self.nonfinite_pixels,
            'flow_failures': self.flow_failures, 'flow_error': self.flow_error,
            # how well the flow held between consecutive frames (far_apart_warning)
            'inconsistent_fraction': fraction_stats(self.inconsistent_fractions),
        }
