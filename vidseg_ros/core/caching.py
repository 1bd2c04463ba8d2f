"""Keyframe feature caching (DFF, Zhu et al. 2017; the FPN-caching thesis): on non-keyframes run only
the low-level part of ESPNetv2 on the current frame and reuse the keyframe's high-level maps,
optionally warped to the current frame by optical flow (``flow(t, k)`` computed directly between
the keyframe and the current frame on the network-input grid).

Levels cached (``ESPNetv2Seg.forward_low`` / ``forward_high``):

* ``levels=1``: level4 (7 EESP units + downsampler) and the first decoder EPP are reused
  ('d1', H/16); level1..level3 and the rest of the decoder run on the current frame;
* ``levels=2``: also level3 ('e3', H/8) is reused; only level1, level2 and the decoder run.

This cannot be a Propagator refiner (it needs the network split), so it has its own
``process(rgb) -> CachedFrame`` loop with a keyframe schedule; pipeline/ROS call it in place of the
keyframe network + Propagator (see ``temporal.make_temporal_module``). A keyframe frame's output is
exactly the full network's output.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .errors import ConfigError, InputError, ModelError

CACHE_KEYS = {1: ('d1',), 2: ('d1', 'e3')}


@dataclass
class CachedFrame:
    """Network-resolution output of one frame: softmax ``probs`` (K, h, w), class-id ``labels``."""

    probs: np.ndarray
    labels: np.ndarray
    is_keyframe: bool
    distance: int
    timings: dict = field(default_factory=dict)


class FeatureCachingSegmenter:
    """Keyframe feature caching for an ESPNetv2 model (loaded with a torch ``net``).

    ``levels``: 1 or 2 (see module docstring). ``schedule``: an int interval S (keyframe every S
    frames) or a Schedule (``is_keyframe(index, stats)``). ``warp``: flow-warp the cached maps (DFF)
    or reuse them as they are. ``flow``: a FlowEstimator (default DIS ultrafast).
    """

    def __init__(self, model, levels: int = 1, schedule=5, warp: bool = True, flow=None):
        net = getattr(model, 'net', None)
        if net is None or not hasattr(net, 'forward_low') or isinstance(net, torch.jit.ScriptModule):
            raise ModelError(f'feature caching needs an ESPNetv2 model with a torch network '
                             f'(got {getattr(model, "name", type(model).__name__)})')
        if int(levels) not in CACHE_KEYS:
            raise ConfigError(f'caching levels must be 1 or 2, got {levels}')
        self.model, self.net, self.levels = model, net, int(levels)
        self.keys = CACHE_KEYS[self.levels]
        if isinstance(schedule, int):
            if schedule < 1:
                raise ConfigError(f'keyframe interval must be >= 1, got {schedule}')
            from .schedule import FixedSchedule
            schedule = FixedSchedule(schedule)
        self.schedule = schedule
        self.warp = bool(warp)
        if flow is None:
            from .flow import FlowEstimator
            flow = FlowEstimator('dis', preset='ultrafast')
        self.flow = flow
        self.device = torch.device(getattr(model, 'device', 'cpu'))
        self.reset()

    def reset(self):
        self._cache = None
        self._key_gray = None
        self.frame_index = 0
        self._dist = -1
        if hasattr(self.schedule, 'reset'):
            self.schedule.reset()

    def _input(self, rgb):
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f'expected an RGB uint8 image (H, W, 3), got '
                             f'{getattr(rgb, "shape", type(rgb).__name__)}')
        x = torch.from_numpy(self.model.preprocess(rgb)).to(self.device)
        w, h = self.model.input_size
        small = rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        return x, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    def keyframe_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full network on a keyframe; fills the cache."""
        with torch.inference_mode():
            logits, maps = self.net.forward_high(self.net.forward_low(x), return_features=True)
        self._cache = {k: maps[k] for k in self.keys}
        return logits

    def cached_logits(self, x: torch.Tensor, flow=None) -> torch.Tensor:
        """Low-level part on ``x`` + the cached (flow-warped when ``flow`` is given) high level."""
        if self._cache is None:
            raise InputError('no keyframe cached yet')
        from .warp import make_remap, warp_features
        cached = self._cache
        if flow is not None:
            cached = {}
            for k, v in self._cache.items():
                h, w = int(v.shape[2]), int(v.shape[3])
                cached[k] = warp_features(v, make_remap(flow, (w, h)))
        with torch.inference_mode():
            low = self.net.forward_low(x, levels=3 if self.levels == 1 else 2)
            return self.net.forward_high(low, cached=cached)

    def process(self, rgb: np.ndarray, keyframe: bool | None = None) -> CachedFrame:
        """Segment the next frame (``keyframe`` overrides the schedule)."""
        t0 = time.perf_counter()
        x, gray = self._input(rgb)
        idx = self.frame_index
        self.frame_index += 1
        is_kf = keyframe if keyframe is not None else self.schedule.is_keyframe(idx, {})
        if self._cache is None:
            is_kf = True
        tm = {}
        if is_kf:
            logits = self.keyframe_logits(x)
            self._key_gray = gray
            self._dist = 0
        else:
            flow = None
            if self.warp:
                t1 = time.perf_counter()
                flow = self.flow.compute_native(gray, self._key_gray)   # flow(t, k) on t's grid
                tm['flow'] = time.perf_counter() - t1
            logits = self.cached_logits(x, flow)
            self._dist += 1
        with torch.inference_mode():
            t = logits[0]
            probs = torch.softmax(t, 0).cpu().numpy()
            idx_max = t.argmax(0).to(torch.uint8).cpu().numpy()
        tm['total'] = time.perf_counter() - t0
        if hasattr(self.schedule, 'observe'):
            self.schedule.observe(is_kf, tm['total'])
        return CachedFrame(probs, self.model.output_to_class[idx_max], bool(is_kf), self._dist, tm)
