"""Two-sided (delayed) propagation: carry the *next* keyframe back as well, and fuse both sides.

Forward propagation (``propagation.Propagator``, EVS eq. 1-2) gives frame t the semantics of the last
keyframe k0 <= t carried forward through t - k0 flows. Its errors are what the flow cannot know going
forward: content that becomes visible after k0 (disocclusions, objects entering the view) and the
drift that grows with t - k0. A consumer that can wait for the next keyframe k1 > t (offline labelling,
``vidseg run``, a mapping back end; not a controller that needs the label now) can also carry k1's
semantics *back* to t through the forward flows ``flow(t, t+1)`` that the IAM's forward-backward check
computes anyway, and fuse the two (this module). Then no frame is further than S/2 from a keyframe, and
what became visible after k0 is seen by k1.

Fusion (:func:`fuse_two_sided`, per pixel, distances d_f = t - k0 and d_b = k1 - t):

* probabilities: ``P = (P_f / d_f + P_b / d_b) / (1 / d_f + 1 / d_b)`` (the nearer side counts more);
* labels (working resolution): where the two carried label maps agree, that label; where they differ,
  the candidate with the higher fused probability in that pixel's probability cell (ties: forward), so
  full-resolution label detail is kept and only disagreements are decided by the coarser probabilities;
* trust (session 10): each side's chain also carries a trust map, the pixels whose every flow link on
  the way passed the forward-backward check (:func:`link_checks`: ``iam.flow_inconsistency``, the
  check behind the IAM, at the flow's native resolution), warped along with the labels. Where the
  sides disagree and exactly one of them is trusted, the untrusted side's fused probability counts
  only half (``UNTRUSTED_WEIGHT``): a chain that crossed an occlusion or a flow failure is the
  likelier one to be wrong there.
* per-pixel forward distance (session 12): where the forward state carries an age map (region refresh,
  ``core/region.py``: frames since the network last labelled the pixel), a disagreement is decided with
  each pixel's own forward distance, its age (at least 1: a pixel the network labelled on this very frame
  counts like one next to a keyframe; at most d_f), instead of d_f: ``w_f P_f(c) + w_b P_b(c)`` for
  both candidate labels c, w = 1 / distance.

Cost per propagated frame on top of forward propagation: one more warp (labels nearest, probabilities
bilinear) and the fusion; with the trust, two forward-backward checks per flow link and the two trust
maps (~2 ms more at 1024x512). The flows are the fields the IAM already needs (at a keyframe, the pair
that forward propagation would not compute). Latency: a frame's fused output exists
when the next keyframe's result does, i.e. up to S - 1 frames plus one keyframe pass later.

:class:`TwoSidedBuffer` holds the forward outputs until the next keyframe and releases them in frame
order (``max_delay`` bounds the wait in frames, ``max_wait_s`` in seconds: older frames go out
forward-only). :class:`TwoSidedSegmenter`
wraps a ``pipeline.VideoSegmenter`` (``vidseg run --two-sided``, the ``two_sided_sN`` rows of
``vidseg bench``).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import replace
from typing import NamedTuple, Optional

import cv2
import numpy as np

from .errors import ConfigError, InputError
from .iam import flow_inconsistency
from .propagation import (IGNORE, FrameOutput, Semantics, _validate_flow, confidence_map, fill_warp_holes,
                          warp_semantics)
from .warp import make_remap

__all__ = ['fuse_two_sided', 'link_checks', 'carry_trust', 'TwoSidedBuffer', 'TwoSidedSegmenter']

TRUST_THRESHOLD = 1.0   # px of the flow's grid: flow_inconsistency's default, not tuned
UNTRUSTED_WEIGHT = 0.5  # chosen on the Cityscapes snippets' five keyframe phases (BENCHMARKS.md 4)


def link_checks(flow_bwd, flow_fwd, thr: float = TRUST_THRESHOLD, on_t: bool = True):
    """The forward-backward check of one flow link t-1 -> t (``flow_bwd`` = flow(t, t-1) on t's grid,
    ``flow_fwd`` = flow(t-1, t) on t-1's grid): (ok on t's grid, ok on t-1's grid), uint8 1 where the
    check passes. The first is what the forward chain needs on its way into t (``on_t`` False: not
    computed, None; a keyframe starts a new chain), the second what the carried-back chain needs on
    its way into t-1. None when either field is missing. ~0.4 ms per check at 256x128."""
    if flow_bwd is None or flow_fwd is None:
        return None
    ok_t = np.logical_not(flow_inconsistency(flow_bwd, flow_fwd, thr)).view(np.uint8) if on_t else None
    ok_prev = np.logical_not(flow_inconsistency(flow_fwd, flow_bwd, thr)).view(np.uint8)
    return ok_t, ok_prev


def carry_trust(trust, flow, ok):
    """A chain's trust map one link on: ``trust`` (uint8, None = the chain starts here) warped along
    ``flow`` (nearest; what comes from outside the frame is untrusted) and AND-ed with the link's own
    check ``ok``. None when ``ok`` is None (no check: trust unknown from here on)."""
    if ok is None:
        return None
    if trust is None:
        return ok
    h, w = ok.shape
    rm = make_remap(flow, (w, h))
    moved = cv2.remap(trust, rm.map_x, rm.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=0)
    return cv2.bitwise_and(moved, ok)


def _cells(ys: np.ndarray, xs: np.ndarray, size_wh, grid_hw) -> np.ndarray:
    """Flat index of the cell of a (gh, gw) grid that each working-resolution pixel (ys[i], xs[i]) of a
    (w, h) frame falls in (nearest, as cv2.resize INTER_NEAREST picks it)."""
    gh, gw = grid_hw
    w, h = size_wh
    return np.minimum(ys * gh // h, gh - 1) * gw + np.minimum(xs * gw // w, gw - 1)


def _plane_index(class_map: np.ndarray) -> np.ndarray:
    """(256,) int: class id -> probability plane (-1: no plane, e.g. void)."""
    inv = np.full(256, -1, np.int64)
    for plane, c in enumerate(np.asarray(class_map, np.uint8)):
        if c != IGNORE and inv[c] < 0:
            inv[c] = plane
    return inv


def _sample(p: np.ndarray, plane_sets, ys: np.ndarray, xs: np.ndarray, size_wh, cell=None) -> list:
    """Values of ``p`` (K, hp, wp) at working-resolution pixels (ys[i], xs[i]) of a (w, h) grid: the
    probability cell each pixel falls in (nearest, as cv2.resize INTER_NEAREST picks it), one int16
    array per entry of ``plane_sets`` (the value of plane ``planes[i]`` at pixel i; planes < 0 give -1).
    Nearest, not bilinear: it runs on every pixel where the two sides disagree (~10 % of the frame at
    S=5), and bilinear sampling measured +0.1 mIoU at S=5 for ~0.4 ms more per frame (BENCHMARKS 4).
    ``cell``: the pixels' :func:`_cells` on p's grid, when the caller has them."""
    k, hp, wp = p.shape
    if cell is None:
        cell = _cells(ys, xs, size_wh, (hp, wp))
    flat = p.reshape(-1)
    out = []
    for planes in plane_sets:
        v = flat.take(np.maximum(planes, 0) * (hp * wp) + cell).astype(np.int16)
        v[planes < 0] = -1
        out.append(v)
    return out


def fuse_two_sided(fwd: Semantics, d_fwd: int, bwd: Semantics, d_bwd: int, trust_fwd=None,
                   trust_bwd=None, untrusted_weight: float = UNTRUSTED_WEIGHT) -> Semantics:
    """Fuse the semantics carried forward from the previous keyframe (``d_fwd`` frames away) with those
    carried back from the next one (``d_bwd`` frames away); see the module docstring. ``trust_fwd`` /
    ``trust_bwd``: the chains' trust maps (:func:`carry_trust`, any resolution); used only when both
    are given, to weigh the untrusted side's vote by ``untrusted_weight`` (0: the trusted side wins
    outright; 1: trust is ignored). Where ``fwd`` has an age map (region refresh), disagreements are decided
    with each pixel's own forward distance (its age, clipped to [1, d_fwd]; module docstring)."""
    if not 0.0 <= float(untrusted_weight) <= 1.0:
        raise ConfigError(f'untrusted_weight must be in [0, 1], got {untrusted_weight}')
    if not isinstance(fwd, Semantics) or not isinstance(bwd, Semantics):
        raise InputError('fuse_two_sided expects two Semantics')
    if fwd.size != bwd.size:
        raise InputError(f'cannot fuse semantics of sizes {fwd.size} and {bwd.size}')
    d_fwd, d_bwd = int(d_fwd), int(d_bwd)
    if d_fwd < 1 or d_bwd < 1:
        raise ConfigError(f'distances to the keyframes must be >= 1, got {d_fwd} and {d_bwd}')
    lf, lb = fwd.labels, bwd.labels
    if fwd.probs is None or bwd.probs is None:
        # labels only: the nearer side wins where they differ (ties: forward)
        return Semantics(lf.copy() if d_fwd <= d_bwd else lb.copy())
    if fwd.probs.shape != bwd.probs.shape or not np.array_equal(fwd.class_map, bwd.class_map):
        raise InputError(f'cannot fuse probabilities of shapes {fwd.probs.shape} and {bwd.probs.shape} '
                         'or with different class maps')
    wf, wb = 1.0 / d_fwd, 1.0 / d_bwd
    k, hp, wp = fwd.probs.shape
    # fused probabilities, quantised like the state (uint8, rounded): one OpenCV pass
    probs = cv2.addWeighted(fwd.probs.reshape(k * hp, wp), wf / (wf + wb),
                            bwd.probs.reshape(k * hp, wp), wb / (wf + wb), 0.0).reshape(k, hp, wp)
    labels = lf.copy()
    idx = np.flatnonzero(cv2.compare(lf, lb, cv2.CMP_NE)).astype(np.int32)
    if idx.size:
        w = lf.shape[1]
        ys, xs = idx // w, idx % w
        inv = _plane_index(fwd.class_map).astype(np.int32)
        cf, cb = lf.reshape(-1).take(idx), lb.reshape(-1).take(idx)
        cell = _cells(ys, xs, fwd.size, (hp, wp))
        age = fwd.age
        if age is not None and age.shape == lf.shape:
            # region refresh: each pixel's own forward distance, the frames since the network last labelled
            # it (this frame's own evidence counts like a neighbouring keyframe: 1), at most d_fwd
            wfp = 1.0 / np.clip(age.reshape(-1).take(idx), 1, d_fwd).astype(np.float32)
            planes = (inv[cf], inv[cb])
            (f_cf, f_cb), (b_cf, b_cb) = (_sample(x.probs, planes, ys, xs, fwd.size, cell=cell) for x in (fwd, bwd))
            sf = np.where(planes[0] < 0, -1.0, wfp * f_cf + wb * b_cf)
            sb = np.where(planes[1] < 0, -1.0, wfp * f_cb + wb * b_cb)
        else:
            sf, sb = _sample(probs, (inv[cf], inv[cb]), ys, xs, fwd.size, cell=cell)
        take_b = sb > sf
        if trust_fwd is not None and trust_bwd is not None:
            # one code per trust cell: 2 = only the forward chain trusted, 1 = only the carried-back one
            tf = np.asarray(trust_fwd) > 0
            tb = np.asarray(trust_bwd) > 0
            if tb.shape != tf.shape:
                tb = cv2.resize(tb.view(np.uint8), tf.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
            code = (tf & ~tb).view(np.uint8) * 2 + (tb & ~tf).view(np.uint8)
            c = code.reshape(-1).take(cell if code.shape == (hp, wp) else _cells(ys, xs, fwd.size, code.shape))
            sel = np.flatnonzero(c)
            if sel.size:
                # the untrusted side's probability counts ``untrusted_weight``; never a void label
                a = float(untrusted_weight)
                only_f = c[sel] == 2
                vb = sb[sel] * np.where(only_f, a, 1.0)
                vf = sf[sel] * np.where(only_f, 1.0, a)
                take_b[sel] = (vb > vf) & (cb[sel] != IGNORE)
        labels.reshape(-1)[idx[take_b]] = cb[take_b]
    return Semantics(labels, probs, fwd.class_map)


class _Held(NamedTuple):
    """A frame waiting for the next keyframe."""
    out: FrameOutput
    flow_fwd: Optional[np.ndarray]     # flow(t-1, t): carries the next state back to t-1
    since: float                       # when it was pushed (max_wait_s)
    ok_prev: Optional[np.ndarray]      # the link's check on t-1's grid (carried-back chain into t-1)
    trust_f: Optional[np.ndarray]      # the forward chain's trust at t


class TwoSidedBuffer:
    """Hold forward outputs until the next keyframe, then release them fused (module docstring).

    :meth:`push` takes every frame's forward :class:`FrameOutput` in frame order (its ``semantics`` at
    working resolution) with ``flow_fwd`` = the forward flow from the previous frame to this one, on
    the previous frame's grid (``flow(t-1, t)``, what ``Propagator.step`` gets as ``flow_fwd``; any
    resolution), and returns the outputs that are now final, in frame order. At a keyframe the frames
    held since the previous one come out fused; a broken link (a frame without ``flow_fwd``) ends the
    backward chain, and the frames before it come out forward-only. ``flow_bwd`` (flow(t, t-1), on this
    frame's grid, at the same resolution as ``flow_fwd``) gives the link's forward-backward check, from
    which both chains' trust maps are carried (module docstring); without it (or with ``trust`` off)
    the link is unchecked and the fusion of the frames whose chains cross it uses no trust.
    ``max_delay`` (frames; None = unbounded) releases the oldest held frame forward-only when more are
    held; ``max_wait_s`` (seconds; None = unbounded) releases every frame held longer than that (by the
    ``now`` given to :meth:`push` and :meth:`expire`, default ``time.monotonic()``; a live node calls
    :meth:`expire` from a timer, so the bound holds when no new frame comes). Frames before the first
    keyframe (no forward semantics) take the backward-carried semantics alone, their warp holes
    filled when ``fill_holes`` (the Propagator's setting). Elsewhere the carried-back chain keeps its
    holes void, so that the forward side wins there (it saw the content that left the view).
    ``stats``: frames, fused (of which ``trusted``: fused with both chains' trust maps), forward_only
    (released without the later keyframe), backward_only.
    """

    def __init__(self, max_delay: Optional[int] = None, fill_holes: bool = True,
                 max_wait_s: Optional[float] = None, trust: bool = True):
        if max_delay is not None and int(max_delay) < 0:
            raise ConfigError(f'max_delay must be >= 0 frames or None, got {max_delay}')
        self.max_delay = None if max_delay is None else int(max_delay)
        if max_wait_s is not None and not float(max_wait_s) >= 0:
            raise ConfigError(f'max_wait_s must be >= 0 seconds or None, got {max_wait_s}')
        self.max_wait_s = None if max_wait_s is None else float(max_wait_s)
        self.fill_holes = bool(fill_holes)
        self.trust = bool(trust)
        self._held: deque = deque()
        self.stats = dict(frames=0, fused=0, forward_only=0, backward_only=0, trusted=0)
        self.last_fuse_s = 0.0
        self._trust_f = None      # (distance, trust map) of the forward chain's last frame

    def __len__(self) -> int:
        return len(self._held)

    def push(self, out: FrameOutput, flow_fwd=None, now: Optional[float] = None, flow_bwd=None) -> list:
        if not isinstance(out, FrameOutput):
            raise InputError(f'TwoSidedBuffer.push expects a FrameOutput, got {type(out).__name__}')
        flow_fwd, flow_bwd = _validate_flow('flow_fwd', flow_fwd), _validate_flow('flow_bwd', flow_bwd)
        if flow_fwd is not None and flow_bwd is not None and flow_fwd.shape != flow_bwd.shape:
            raise InputError(f'flow_fwd and flow_bwd must have one shape, got {flow_fwd.shape} and '
                             f'{flow_bwd.shape}')
        self.stats['frames'] += 1
        t0 = time.perf_counter()
        is_kf = out.is_keyframe and out.semantics is not None
        checks = link_checks(flow_bwd, flow_fwd, on_t=not is_kf) if self.trust else None
        checks_s = time.perf_counter() - t0
        if is_kf:
            released = self._resolve(out.semantics, flow_fwd, None if checks is None else checks[1])
            released.append(out)
            self._trust_f = None
            self.last_fuse_s += checks_s
            return released
        # the forward chain's trust: restarts after a keyframe, goes on while the distances follow
        trust = None
        d = int(out.distance)
        if checks is not None and out.semantics is not None:
            if d == 1:
                trust = checks[0]
            elif self._trust_f is not None and self._trust_f[0] == d - 1:
                trust = carry_trust(self._trust_f[1], flow_bwd, checks[0])
        self._trust_f = None if trust is None else (d, trust)
        self.last_fuse_s = time.perf_counter() - t0   # the checks and the trust carried: two-sided work
        now = time.monotonic() if now is None else float(now)
        self._held.append(_Held(out, flow_fwd, now, None if checks is None else checks[1], trust))
        released = []
        while self.max_delay is not None and len(self._held) > self.max_delay:
            released.append(self._forward_only(self._held.popleft().out))
        return released + self.expire(now)

    def expire(self, now: Optional[float] = None) -> list:
        """Release (forward-only, in frame order) the frames held longer than ``max_wait_s``."""
        if self.max_wait_s is None:
            return []
        now = time.monotonic() if now is None else float(now)
        released = []
        while self._held and now - self._held[0].since > self.max_wait_s:
            released.append(self._forward_only(self._held.popleft().out))
        return released

    def keyframe(self, frame_id, sem: Semantics) -> list:
        """The keyframe result for a frame that was pushed as a propagated frame because the result came
        later (a late keyframe in the ROS graph). The held frames before it come out fused with ``sem``
        carried back, then the frame itself with the keyframe's semantics; frames held after it stay (their
        forward semantics came from the older keyframe). A frame no longer held: nothing (counted in
        ``stats['keyframe_not_held']``)."""
        ids = [h.out.frame_id for h in self._held]
        if frame_id not in ids:
            self.stats['keyframe_not_held'] = self.stats.get('keyframe_not_held', 0) + 1
            return []
        i = ids.index(frame_id)
        self._trust_f = None   # the frames after it will count their distance from it: a new chain
        held = list(self._held)
        o, f, ok = held[i].out, held[i].flow_fwd, held[i].ok_prev
        self._held = deque(held[:i])
        released = self._resolve(sem, f, ok)
        released.append(replace(o, labels=sem.labels, confidence=confidence_map(sem), semantics=sem,
                                is_keyframe=True, distance=0, degraded=False, lookahead=0))
        self._held = deque(held[i + 1:])
        return released

    def flush(self) -> list:
        """End of the stream: release every held frame forward-only."""
        out = [self._forward_only(h.out) for h in self._held]
        self._held.clear()
        return out

    def _forward_only(self, o: FrameOutput) -> FrameOutput:
        self.stats['forward_only'] += 1
        return o

    def _resolve(self, kf_sem: Semantics, kf_flow, kf_ok=None) -> list:
        t0 = time.perf_counter()
        held = list(self._held)
        self._held.clear()
        fused = [None] * len(held)
        sem_b, link, link_ok, d_b = kf_sem, kf_flow, kf_ok, 0
        trust_b = None
        for i in range(len(held) - 1, -1, -1):
            o, f = held[i].out, held[i].flow_fwd
            if link is None:
                break
            # the carried-back chain keeps its holes void (content that left the view going forward):
            # there the forward side, which saw that content, wins the fusion (a void label has no plane)
            sem_b = warp_semantics(sem_b, link, fill_holes=False)
            trust_b = carry_trust(trust_b, link, link_ok) if (d_b == 0 or trust_b is not None) else None
            d_b += 1
            fwd = o.semantics
            if fwd is not None and fwd.size != sem_b.size:
                break   # resolution changed between the frames: nothing to fuse across
            if fwd is None:   # no forward side: the carried-back semantics alone, holes filled
                sem = sem_b
                if self.fill_holes and sem.probs is not None:
                    sem = replace(sem, labels=fill_warp_holes(sem.labels.copy(), sem.probs, sem.class_map))
                self.stats['backward_only'] += 1
            else:
                sem = fuse_two_sided(fwd, max(o.distance, 1), sem_b, d_b, held[i].trust_f, trust_b)
                self.stats['fused'] += 1
                self.stats['trusted'] += int(held[i].trust_f is not None and trust_b is not None)
            fused[i] = replace(o, labels=sem.labels, confidence=confidence_map(sem), semantics=sem,
                               lookahead=d_b, degraded=o.degraded if fwd is not None else False)
            link, link_ok = f, held[i].ok_prev
        res = [fused[i] if fused[i] is not None else self._forward_only(held[i].out) for i in range(len(held))]
        self.last_fuse_s = time.perf_counter() - t0
        return res


class TwoSidedSegmenter:
    """A ``pipeline.VideoSegmenter`` whose propagated frames are fused with the next keyframe carried
    back (module docstring). :meth:`process` returns the outputs that became final (a list, frame order,
    labels at the input resolution); :meth:`flush` the rest at the end of the stream. The keyframe
    schedule, the flows and the forward state are the segmenter's own."""

    def __init__(self, segmenter, max_delay: Optional[int] = None, trust: bool = True):
        if not segmenter.op.warp:
            raise ConfigError('two-sided propagation needs warping (W+)')
        self.segmenter = segmenter
        segmenter.flows_at_keyframes = True
        segmenter.keyframe_flow_pair = bool(trust)   # the backward field into a keyframe: only the check needs it
        self.buffer = TwoSidedBuffer(max_delay, fill_holes=segmenter.propagator.fill_holes, trust=trust)
        self._size = None
        self.fuse_s = 0.0
        self.last_forward = None   # the forward (causal) output of the frame processed last
        self._iam_default = segmenter.propagator.use_iam

    def _iam_needed(self) -> bool:
        """The fusion takes over the IAM's job (finding where the warp went wrong): compute the IAM only
        for a schedule that reads it (adaptive) or a refiner."""
        from .schedule import AdaptiveSchedule
        seg = self.segmenter
        return self._iam_default and (isinstance(seg.schedule, AdaptiveSchedule) or seg.refiner is not None)

    def process(self, rgb: np.ndarray, stamp: float | None = None) -> list:
        seg = self.segmenter
        seg.propagator.use_iam = self._iam_needed()
        resets = seg.resets
        out = seg.process(rgb, stamp=stamp)
        self.last_forward = out
        released = self.buffer.flush() if seg.resets != resets else []
        self._size = (rgb.shape[1], rgb.shape[0])
        released += self.buffer.push(out, seg.last_flows[1], flow_bwd=seg.last_flows[0])
        self.fuse_s += self.buffer.last_fuse_s
        return [self._finish(o) for o in released]

    def flush(self) -> list:
        return [self._finish(o) for o in self.buffer.flush()]

    def _finish(self, o: FrameOutput) -> FrameOutput:
        if self._size is not None and o.lookahead and o.labels.shape[::-1] != self._size:
            o.labels = cv2.resize(o.labels, self._size, interpolation=cv2.INTER_NEAREST)
        return o

    def summary(self) -> dict:
        s = self.segmenter.summary()
        s['two_sided'] = {'max_delay': self.buffer.max_delay, 'trust': self.buffer.trust, **self.buffer.stats,
                          'fuse_s_total': self.fuse_s}
        return s
