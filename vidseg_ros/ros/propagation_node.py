"""propagation_node: joins camera frames, flow and keyframe semantics and runs the core Propagator.

Inputs: ``/camera/image_raw`` (headers, output size, timing; the pixels only when refining: taken
serialized, read with ``image_from_cdr`` without converting the pixels),
``/vidseg/flow`` (32FC4/32FC2 at native resolution, 0x0 = chain start; the header's ``#ref_ns=`` names the
frame the flow starts from, see flow_node), ``/vidseg/keyframe/{labels,probs}``
(+ latched ``/vidseg/keyframe/info`` for the class map) and ``/vidseg/keyframe/decision`` (per frame);
with ``temporal_mode`` cache1/cache2 also ``/vidseg/keyframe/features`` (the network's cached maps,
warped with the state; this node runs the network's low-level part on every propagated frame), with
region-ctx the same topic's context grids (``core.region.ContextRegionRefresher``).

For EVERY input frame it publishes, with the input image's exact header: ``/semantic/labels`` (mono8
class ids at the input resolution), ``/semantic/labels_color`` (rgb8 palette), ``/semantic/confidence``
(mono8, 255 = 1.0); once (latched) ``/semantic/classes`` (std_msgs/String JSON); per frame
``/vidseg/propagation/stats`` (JSON, feeds adaptive schedules); ``/semantic/status`` (std_msgs/String
JSON per input frame: ``{"stamp_ns", "frame_id", "published", "degraded", "reasons", "distance",
"keyframe_stamp_ns", "keyframe_age_s", "confidence_scale"}``, see RELIABILITY.md); and ``/diagnostics``.

Degraded reasons: ``no_keyframe``, ``flow_missing`` (this frame's flow did not come), ``flow_chain_restart``,
``labels_held`` (held across an earlier flow gap until the next keyframe, unless a later flow spans the gap
from the frame the labels were held from, or the missing flow arrives late before a newer frame was
propagated with its own flow (``late_flows_applied``, ``Propagator.amend_flow``): then they are exact
again), ``keyframe_too_old``
(``max_distance``), ``keyframe_overdue`` (an announced keyframe result is ``source_timeout`` s late),
``keyframe_node_silent`` / ``flow_node_silent`` (camera frames kept coming for ``source_timeout`` s
without any message from that node; an idle stream is not a silent node; frames
then stop waiting for flow), ``out_of_order``, ``step_error``. Frames without labels (``published``
false): ``bad_image: ...`` and ``duplicate_stamp``.

Join (own bounded buffer, keyed by stamp): frames are stepped in stamp order; a frame waits for its
flow at most ``flow_timeout`` s (then it is output as degraded: labels held). Keyframe results are
handed to the Propagator as they arrive: before their frame (used there), or late (re-propagated to the
newest frame by the Propagator; the newest frame's labels always come from the latest semantics
available). ``keyframe_wait`` > 0 lets a frame wait up to that long for the keyframe node's decision and,
for a keyframe, its result (default 0.3 s since session 14; 0 = never wait: live mode), while the recent
keyframe results came within that bound (``_waiting_pays``); a long bound with paced input is the
deterministic mode. Every dropped or degraded frame is counted.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np

from vidseg_ros.core.errors import InputError, VidsegError
from vidseg_ros.core.pipeline import fraction_stats, frames_far_apart
from vidseg_ros.ros import graph
from vidseg_ros.ros.common import (LatencyStats, RateCounter, check, diag_level, input_qos, latched_qos,
                                   reliable_qos, run_node)
from vidseg_ros.ros.conversions import (ConversionError, check_image, image_to_ndarray,
                                        image_to_rgb, ndarray_to_image, stamp_to_ns)
from vidseg_ros.ros.flow_node import parse_flow_frame_id
from vidseg_ros.ros.lifecycle_base import VidsegLifecycleNode


STATUS_TOPIC = graph.STATUS_TOPIC   # per-frame JSON status (degraded + reasons)
RESTART_BACKWARDS_NS = 1_000_000_000  # an image this much older than the newest frame = stream restart
PLAUSIBLE_AGE_S = 60.0   # a frame's stamp age on the ROS clock beyond this (or negative) is another clock's
RECENT_WINDOW = 50       # diagnostics: recent frames judged together (IAM fraction median, stale stamps)
STALE_STAMPS_MIN = 5     # diagnostics: WARN when this many (and most) recent frames had a stale stamp
LAG_WINDOW_S = 5.0       # load shedding: the pipeline's own latency = the lowest frame lag over this window
KF_DELAY_HISTORY = 5     # keyframe_wait: the last this many keyframe results' delays (image -> result)
KF_WAIT_FACTOR, KF_WAIT_MARGIN_S = 1.25, 0.05   # keyframe_wait_max: the adaptive bound (median delay x + s)


class _Slot:
    __slots__ = ('ns', 'image', 'flow', 'flow_ref', 'has_flow', 't_first', 't_image', 't_flow')

    def __init__(self, ns, now):
        self.ns = ns
        self.image = None      # the camera Image message
        self.flow = None       # (bwd, fwd) arrays, or None for a chain start
        self.flow_ref = None   # stamp of the frame the flow starts from (None: not given)
        self.has_flow = False
        self.t_first = now
        self.t_image = None    # monotonic arrival of the image
        self.t_flow = None     # ... of its flow

    @property
    def t_ready(self):
        """When image and flow were both present: keyframe_wait counts from here, not from when the frame
        reached the head of the queue (then the waits of keyframe frames queued one behind another would
        add up). None until both are in."""
        return None if self.t_image is None or self.t_flow is None else max(self.t_image, self.t_flow)


def decode_flow(msg, on_nonfinite=None):
    """/vidseg/flow message -> (bwd, fwd|None), or None for a 0x0 chain-start message. NaN/Inf
    displacements are set to 0 (``on_nonfinite(n_values)`` is called)."""
    if msg.height == 0 or msg.width == 0:
        return None
    arr = image_to_ndarray(msg)
    if arr.ndim != 3 or arr.shape[2] not in (2, 4) or arr.dtype != np.float32:
        raise VidsegError(f'flow message must be 32FC2 or 32FC4, got {msg.encoding}')
    bad = ~np.isfinite(arr)
    if bad.any():
        arr = np.where(bad, np.float32(0.0), arr)
        if on_nonfinite is not None:
            on_nonfinite(int(bad.sum()))
    bwd = np.ascontiguousarray(arr[:, :, :2])
    fwd = np.ascontiguousarray(arr[:, :, 2:]) if arr.shape[2] == 4 else None
    return bwd, fwd


def semantics_from_msgs(labels_msg, probs_msg, class_map):
    """Keyframe labels (mono8) + probs (8UC(K)) messages -> core Semantics."""
    from vidseg_ros.core.propagation import Semantics
    labels = image_to_ndarray(labels_msg)
    probs = None
    if probs_msg is not None:
        p = image_to_ndarray(probs_msg)
        p = p[:, :, None] if p.ndim == 2 else p
        probs = np.ascontiguousarray(p.transpose(2, 0, 1))
    cm = None if class_map is None else np.asarray(class_map, np.uint8)
    return Semantics(labels, probs, cm)


def features_from_msgs(msgs: dict) -> dict:
    """{name: 32FC(C) Image} from the keyframe node -> {name: (C, h, w) float32} (Semantics.features)."""
    out = {}
    for name, m in msgs.items():
        a = image_to_ndarray(m)
        if a.dtype != np.float32:
            raise InputError(f'cached map {name}: expected a 32FC(C) image, got {m.encoding}')
        a = a[:, :, None] if a.ndim == 2 else a
        if not np.isfinite(a).all():
            raise InputError(f'cached map {name} has non-finite values')
        out[name] = np.ascontiguousarray(a.transpose(2, 0, 1))
    return out


class PropagationNode(VidsegLifecycleNode):
    # applied at run time (the rest are read on configure): the join's bounds, read per frame
    LIVE_PARAMS = ('keyframe_wait', 'keyframe_wait_max', 'flow_timeout', 'refine_max_lag', 'max_pending',
                   'source_timeout')

    def __init__(self, **kw):
        super().__init__('propagation_node', **kw)

    def declare_params(self):
        self.declare('scale', 1, 'working-resolution downscale D (as flow_node/keyframe_node)',
                     int_range=(1, 16))
        self.declare('warp', True, 'propagate labels with the flow (false: hold keyframe labels)')
        self.declare('use_iam', True, 'compute the inconsistency attention mask (needs forward flow)')
        self.declare('refine', False, 'repair IAM regions with a low-resolution network pass')
        self.declare('temporal_mode', '', "propagation mode (issue 4): '' (from refine), warp, iam-lowres, "
                     'refiner (EVS), grfp (STGRU), davss, region (keyframe network on the worst tile), region-ctx '
                     '(the same with the keyframe\'s context: needs keyframe_node region_context), cache1 / '
                     'cache2 (feature caching: needs keyframe_node cache_levels 1 / 2); the learned '
                     'ones use the packaged weights')
        self.declare('temporal_weights', '', 'weights of the learned temporal module (empty = packaged)')
        self.declare('region_tile_area', 0.19, 'temporal_mode region: share of the frame refreshed per '
                     'propagated frame (its cost ~ this share of a keyframe)', float_range=(0.01, 1.0))
        self.declare('region_shape', 'strip', "temporal_mode region: 'strip' (full-height strip) or 'tile' (2:1)")
        self.declare('region_catch_up', 'all', "temporal_mode region(-ctx): a late keyframe is carried through the "
                     "frames buffered since with a region pass on each ('all': the in-order state) or on the "
                     "newest only ('newest': one network pass instead of one per buffered frame)")
        self.declare('refine_max_lag', 0.1, 'load shedding: a propagated frame that lags the camera this many seconds '
                     'more than the recent frames did at their lowest (the pipeline\'s own latency) gets the plain '
                     'warp instead of the temporal module, until the node has caught up; so does a late '
                     'keyframe\'s catch-up then (0 = never skip: a replay that must equal the offline pipeline)',
                     float_range=(0.0, 60.0))
        self.declare('two_sided', False, f'also publish {graph.LABELS_TWO_SIDED_TOPIC}: each frame once the next '
                     'keyframe is in, fused with it carried back (delayed; temporal_mode warp, region or region-ctx; '
                     'core/bidirectional.py)')
        self.declare('two_sided_max_delay', 30, 'two_sided: frames a frame waits for the next keyframe before '
                     'it is published forward-only (the frames that arrive during the keyframe pass count; a '
                     'memory cap behind two_sided_max_wait_s: raise it for cameras above 25 Hz)',
                     int_range=(0, 1000))
        self.declare('two_sided_trust', True, 'two_sided: where the sides disagree, weigh down the side whose flow '
                     'chain failed the forward-backward check (false: ~2 ms a frame cheaper)')
        self.declare('two_sided_max_wait_s', 1.0, 'two_sided: seconds a frame waits (from its processing) for '
                     'the next keyframe before it is published forward-only; 0 = no time bound',
                     float_range=(0.0, 3600.0))
        self.declare('model', 'default', 'model for the refiner (refine:=true)')
        self.declare('weights', '', 'refiner weights (empty = from the model spec)')
        self.declare('device', 'cpu', 'refiner device')
        self.declare('history', 30, 'frames of flow kept for late keyframes', int_range=(1, 10000))
        self.declare('confidence_decay', 0.97, 'confidence factor per frame since the keyframe',
                     float_range=(0.0, 1.0))
        self.declare('max_distance', 0, 'frames after a keyframe beyond which output is degraded (0 = never)',
                     int_range=(0, 100000))
        self.declare('flow_timeout', 0.5, 'max seconds a frame waits for its flow', float_range=(0.0, 60.0))
        self.declare('keyframe_wait', 0.3, 'max seconds a frame waits for the keyframe decision and, for a '
                     'keyframe, the network result, while results come within it (0 = never wait: live mode)',
                     float_range=(0.0, 60.0))
        self.declare('keyframe_wait_max', 0.5, 'above keyframe_wait (> 0): the bound follows the network, the '
                     f'median recent keyframe result delay x {KF_WAIT_FACTOR} + {KF_WAIT_MARGIN_S} s, between '
                     'keyframe_wait and this (a slower machine keeps the offline accuracy for more latency); at or '
                     'below keyframe_wait (e.g. 0): the fixed keyframe_wait', float_range=(0.0, 60.0))
        self.declare('source_timeout', 3.0, 'seconds without messages from flow_node / keyframe_node (or '
                     'an announced keyframe result this late) after which output is marked degraded '
                     '(0 = off)', float_range=(0.0, 3600.0))
        self.declare('max_pending', 30, 'max frames buffered in the join', int_range=(1, 10000))
        self.declare('class_set', 'cityscapes', 'class set until the keyframe node publishes its own')
        self.declare('publish_color', True, 'publish /semantic/labels_color')
        self.declare('publish_confidence', True, 'publish /semantic/confidence')
        self.declare('input_qos', 'sensor_data', "camera QoS: 'sensor_data' (best effort) or 'reliable'")
        self.declare('queue_depth', 10, 'camera subscription depth', int_range=(1, 1000))

    # -------------------------------------------------------------- lifecycle
    def configure(self):
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from vidseg_ros.core.classes import get_class_set
        from vidseg_ros.core.propagation import Propagator
        p = self.params('scale', 'warp', 'use_iam', 'refine', 'temporal_mode', 'temporal_weights', 'region_tile_area',
                        'region_shape', 'region_catch_up', 'refine_max_lag', 'model', 'weights', 'device', 'history',
                        'confidence_decay', 'max_distance', 'flow_timeout', 'keyframe_wait', 'keyframe_wait_max',
                        'max_pending', 'source_timeout', 'two_sided', 'two_sided_max_delay', 'two_sided_max_wait_s',
                        'two_sided_trust', 'class_set', 'publish_color', 'publish_confidence', 'input_qos',
                        'queue_depth')
        qos = input_qos(p['input_qos'], p['queue_depth'])
        check(p['confidence_decay'] > 0, f'confidence_decay must be in (0, 1], got {p["confidence_decay"]}')
        check(not (p['refine'] and not p['warp']), 'refine:=true needs warp:=true')
        self.cfg = p
        self.class_set = get_class_set(p['class_set'])
        mode = p['temporal_mode'] or ('iam-lowres' if p['refine'] else 'warp')
        node_modes = graph.NODE_TEMPORAL_MODES
        check(mode in node_modes, f'temporal_mode {mode!r} is not available in the propagation node '
              f'(use one of {", ".join(node_modes)})')
        check(mode == 'warp' or p['warp'], f'temporal_mode {mode} needs warp:=true')
        refiner = None
        prop_cls = Propagator
        self.cache_keys = ()
        if mode != 'warp':
            from vidseg_ros.core.models import load_model
            from vidseg_ros.core.temporal import REGION_MODES, TemporalPropagator, make_temporal_module
            net = load_model(p['model'], weights=p['weights'] or None, device=p['device'])
            if mode in graph.CACHE_LEVELS:
                # feature caching: the network's low-level part here, its cached maps from the keyframe node
                from vidseg_ros.core.caching import CACHE_KEYS, CachedFeatureRefresher
                refiner = CachedFeatureRefresher(net, graph.CACHE_LEVELS[mode])
                self.cache_keys = CACHE_KEYS[graph.CACHE_LEVELS[mode]]
            else:
                refiner = make_temporal_module(mode, net, weights=p['temporal_weights'] or None, device=p['device'],
                                               **({'tile_area': p['region_tile_area'], 'tile_shape': p['region_shape'],
                                                   'catch_up': p['region_catch_up']}
                                                  if mode in REGION_MODES else {}))
                if mode == 'region-ctx':   # the keyframe's context grids come from the keyframe node
                    from vidseg_ros.core.models.espnetv2 import CONTEXT_KEYS
                    self.cache_keys = CONTEXT_KEYS
            if mode != 'iam-lowres':
                prop_cls = TemporalPropagator
        if p['two_sided']:
            from vidseg_ros.core.temporal import TWO_SIDED_MODES
            check(mode in TWO_SIDED_MODES, f'two_sided:=true combines with temporal_mode '
                  f'{" / ".join(TWO_SIDED_MODES)} only, not {mode}')
        check(not p['two_sided'] or p['warp'], 'two_sided:=true needs warp:=true')
        self.temporal_mode = mode
        self.prop = prop_cls(warp=p['warp'], refiner=refiner, use_iam=p['use_iam'], history=p['history'],
                             confidence_decay=p['confidence_decay'],
                             max_distance=p['max_distance'] or None)
        self.class_map = None
        self.kf_cache_levels = 0    # cached-map levels the keyframe node announces (its info)
        self.kf_region_context = False   # ... and whether it sends its context grids
        self._reset_join()
        self.counts = collections.Counter()
        self.in_rate, self.out_rate = RateCounter(), RateCounter()
        self.latency = LatencyStats()      # image receipt -> labels published
        self.age = LatencyStats()          # stamp -> labels published (ROS clock)
        self.cost = LatencyStats()         # step + conversions
        # IAM fraction of the recent propagated frames: frames too far apart for propagation (diagnostics)
        self.recent_fractions = collections.deque(maxlen=RECENT_WINDOW)
        # stamps of the recent camera frames: True where not newer than the newest processed one
        self.recent_stale_stamps = collections.deque(maxlen=RECENT_WINDOW)
        self.labels_pub = self.pub(Image, graph.LABELS_TOPIC, reliable_qos(10), overridable=True)
        self.color_pub = self.pub(Image, graph.LABELS_COLOR_TOPIC, reliable_qos(10), overridable=True) \
            if p['publish_color'] else None
        self.conf_pub = self.pub(Image, graph.CONFIDENCE_TOPIC, reliable_qos(10), overridable=True) \
            if p['publish_confidence'] else None
        self.two = self.two_pub = None
        self.two_frames = {}   # ns -> (camera header, (w, h)) of frames waiting on the two-sided topic
        self.two_chain_broken = False   # a frame was stepped that the two-sided buffer did not see
        if p['two_sided']:
            from vidseg_ros.core.bidirectional import TwoSidedBuffer
            self.two = TwoSidedBuffer(max_delay=p['two_sided_max_delay'],
                                      max_wait_s=p['two_sided_max_wait_s'] or None, trust=p['two_sided_trust'])
            self.two_pub = self.pub(Image, graph.LABELS_TWO_SIDED_TOPIC, reliable_qos(10), overridable=True)
        self.classes_pub = self.pub(String, graph.CLASSES_TOPIC, latched_qos())
        self.stats_pub = self.pub(String, graph.STATS_TOPIC, reliable_qos(10))
        self.status_pub = self.pub(String, STATUS_TOPIC, reliable_qos(30), overridable=True)
        self.camera_sub(self.on_image_raw, qos)
        self.sub(Image, graph.FLOW_TOPIC, self.on_flow, reliable_qos(30))
        self.sub(Image, graph.KEYFRAME_LABELS_TOPIC, self.on_kf_labels, reliable_qos(10))
        self.sub(Image, graph.KEYFRAME_PROBS_TOPIC, self.on_kf_probs, reliable_qos(10))
        if self.cache_keys:
            self.sub(Image, graph.KEYFRAME_FEATURES_TOPIC, self.on_kf_features, reliable_qos(10))
        self.sub(String, graph.KEYFRAME_DECISION_TOPIC, self.on_decision, reliable_qos(50))
        self.sub(String, graph.KEYFRAME_INFO_TOPIC, self.on_info, latched_qos())
        self._pump_timer = None
        self._start_pump()

    def _start_pump(self):
        """(Re)start the join's timer: every 50 ms, or a quarter of the shortest wait bound."""
        waits = [v for v in (self.cfg['flow_timeout'], self.cfg['keyframe_wait']) if v > 0]
        period = min([0.05] + [v / 4 for v in waits])
        if self._pump_timer is not None:
            if abs(self._pump_timer.timer_period_ns * 1e-9 - period) < 1e-6:
                return
            self._timers.remove(self._pump_timer)
            self.destroy_timer(self._pump_timer)
        self._pump_timer = self.timer(period, self.pump)

    def apply_live_param(self, name, value):
        with self.lock:
            super().apply_live_param(name, value)
            if name in ('flow_timeout', 'keyframe_wait'):
                self._start_pump()

    def _reset_join(self):
        self.slots = collections.OrderedDict()   # ns -> _Slot, unprocessed
        self.kf_parts = collections.OrderedDict()  # ns -> {'labels': msg, 'probs': msg}
        self.decisions = collections.OrderedDict()  # ns -> True (keyframe coming) / False
        self.done_ns = None                       # newest processed stamp
        self.size = None                          # (w, h) of the input
        self._classes_sent = None    # JSON last published on /semantic/classes
        self.flow_owed_since = None  # first image received since the last flow_node message
        self.kf_owed_since = None    # first image received since the last keyframe_node message
        self.last_kf_result_t = None
        self.newest_kf_result_ns = None
        self.kf_overdue = None       # (stamp_ns, t) of the oldest announced keyframe without a result
        self.last_in_ns = None       # newest input stamp (gap estimate)
        self.intervals = collections.deque(maxlen=31)
        self.lags = collections.deque()   # (monotonic t, lag s) of the frames processed lately (_behind)
        self.t_images = collections.OrderedDict()   # ns -> monotonic arrival of the image (keyframe delays)
        self.kf_delays = collections.deque(maxlen=KF_DELAY_HISTORY)   # s from image to keyframe result

    def activate(self):
        self.flow_owed_since = self.kf_owed_since = None
        self._publish_classes()

    # -------------------------------------------------------------- source health
    def _silent(self, since, now=None) -> bool:
        """True when ``since`` (a monotonic time, or None) is more than ``source_timeout`` ago."""
        to = self.cfg['source_timeout']
        return to > 0 and since is not None and (time.monotonic() if now is None else now) - since > to

    def _source_reasons(self, now) -> list:
        r = []
        if self._silent(self.kf_owed_since, now):
            r.append('keyframe_node_silent')
        elif self.kf_overdue is not None and self._silent(self.kf_overdue[1], now):
            r.append('keyframe_overdue')
        if self._silent(self.flow_owed_since, now):
            r.append('flow_node_silent')
        return r

    def _status(self, hdr, published, degraded, reasons, out=None):
        from std_msgs.msg import String
        now = time.monotonic()
        dist = -1 if out is None else int(out.distance)
        st = {'stamp_ns': stamp_to_ns(hdr.stamp), 'frame_id': hdr.frame_id, 'published': bool(published),
              'degraded': bool(degraded), 'reasons': list(reasons), 'distance': dist,
              'keyframe_stamp_ns': None if out is None or out.keyframe_id is None else int(out.keyframe_id),
              'keyframe_age_s': None if self.last_kf_result_t is None else round(now - self.last_kf_result_t, 3),
              'confidence_scale': 0.0 if dist < 0 else float(self.cfg['confidence_decay'] ** dist)}
        self.status_pub.publish(String(data=json.dumps(st)))

    def deactivate(self):
        self._two_sided_flush()
        self.prop.reset()
        self._reset_join()

    # -------------------------------------------------------------- inputs
    def _slot(self, ns, now):
        s = self.slots.get(ns)
        if s is None:
            s = _Slot(ns, now)
            newest = next(reversed(self.slots)) if self.slots else None
            self.slots[ns] = s
            if newest is not None and ns < newest:  # keep stamp order
                self.slots = collections.OrderedDict(sorted(self.slots.items()))
        return s

    def on_image_raw(self, raw: bytes):
        """The camera subscription (serialized): header and fields; the pixels stay undecoded bytes."""
        if not self.active:
            self.counts['dropped_inactive'] += 1
            return
        msg = self.camera_message(raw)
        if msg is None:  # no header either: cannot be reported per frame, only counted
            self.counts['frames_in'] += 1
            return
        self.on_image(msg)

    def on_image(self, msg):
        if not self.active:
            self.counts['dropped_inactive'] += 1
            return
        now = time.monotonic()
        ns = stamp_to_ns(msg.header.stamp)
        self.in_rate.tick(now)
        self.counts['frames_in'] += 1
        self.track_camera(msg.header.frame_id)
        try:
            check_image(msg, named_only=True)
        except ConversionError as e:  # no labels can be made at its size: counted and reported
            self.counts['bad_images'] += 1
            self.get_logger().error(f'input image rejected: {e}', throttle_duration_sec=5.0)
            self._status(msg.header, False, True, [f'bad_image: {e}'])
            return
        self._count_gap(ns)
        if self.flow_owed_since is None:
            self.flow_owed_since = now
        if self.kf_owed_since is None:
            self.kf_owed_since = now
        stale = self.done_ns is not None and ns <= self.done_ns
        self.recent_stale_stamps.append(stale and self.done_ns - ns <= RESTART_BACKWARDS_NS)
        if stale:
            if self.done_ns - ns > RESTART_BACKWARDS_NS:  # stream restarted (bag loop): start over
                self._restart(f'image {ns} < newest {self.done_ns}')
            else:
                self._out_of_order(msg, ns)
                return
        s = self._slot(ns, now)
        if s.image is not None:
            self.recent_stale_stamps[-1] = True
            self.counts['duplicate_images'] += 1
            self.get_logger().warning(f'duplicate image stamp {ns}: dropped', throttle_duration_sec=5.0)
            self._status(msg.header, False, True, ['duplicate_stamp'])
            return
        s.image, s.t_image = msg, now
        self.t_images[ns] = now
        while len(self.t_images) > self.cfg['history']:
            self.t_images.popitem(last=False)
        self.pump()

    def _on_nonfinite_flow(self, n):
        self.counts['nonfinite_flows'] += 1
        self.get_logger().warning(f'flow message with {n} NaN/Inf values: set to 0', throttle_duration_sec=5.0)

    def _count_gap(self, ns):
        """Estimate input frames lost before this node (transport, camera) from gaps in the stamps."""
        last = self.last_in_ns
        if last is not None and ns > last:
            dt = ns - last
            iv = self.intervals
            if len(iv) >= 5:
                period = sorted(iv)[len(iv) // 5]  # low percentile: the nominal period even when many are lost
                if period > 0 and dt > 1.5 * period:
                    self.counts['input_gap_frames'] += int(round(dt / period)) - 1
            iv.append(dt)
        if last is None or ns > last or last - ns > RESTART_BACKWARDS_NS:
            self.last_in_ns = ns

    def on_flow(self, msg):
        if not self.active:
            self.counts['flows_dropped_inactive'] += 1
            return
        self.counts['flows_in'] += 1   # against flow_node's 'flows': a gap means lost on the wire
        now = time.monotonic()
        self.flow_owed_since = None
        ns = stamp_to_ns(msg.header.stamp)
        try:
            flow = decode_flow(msg, self._on_nonfinite_flow)
        except VidsegError as e:
            self.counts['bad_flow'] += 1
            self.get_logger().error(str(e), throttle_duration_sec=5.0)
            return
        if self.done_ns is not None and ns <= self.done_ns:
            if flow is None and ns < self.done_ns:  # stream restarted (bag loop): start over
                self._restart(f'flow chain start {ns} < newest {self.done_ns}')
            else:
                self.counts['late_flows'] += 1
                # its frame was output held: the state can still use it (if held since the flow's start)
                ref = parse_flow_frame_id(msg.header.frame_id)[1]
                if flow is not None and self.prop.amend_flow(ns, *flow, flow_ref=ref):
                    self.counts['late_flows_applied'] += 1
                return
        s = self._slot(ns, now)
        if s.has_flow:  # a second flow for the same stamp (duplicate camera stamps): keep the first
            self.counts['duplicate_flows'] += 1
            return
        s.flow, s.has_flow, s.t_flow = flow, True, now
        s.flow_ref = parse_flow_frame_id(msg.header.frame_id)[1] if flow is not None else None
        self.pump()

    def _restart(self, why=''):
        self.get_logger().warning(f'time went backwards ({why}): resetting the propagation state')
        self.counts['resets'] += 1
        self.prop.reset()
        sent = self._classes_sent
        self._reset_join()
        self._classes_sent = sent

    def on_decision(self, msg):
        if not self.active:
            return
        try:
            d = json.loads(msg.data)
            ns, kf = int(d['stamp_ns']), bool(d['keyframe'])
        except (ValueError, KeyError, TypeError):
            self.counts['bad_decisions'] += 1
            return
        now = time.monotonic()
        self.kf_owed_since = None
        if kf and self.kf_overdue is None and (self.newest_kf_result_ns is None or ns > self.newest_kf_result_ns):
            self.kf_overdue = (ns, now)
        if self.decisions.get(ns) != 'received':
            self.decisions[ns] = kf
        while len(self.decisions) > 4 * self.cfg['max_pending']:
            self.decisions.popitem(last=False)
        self.pump()

    def on_info(self, msg):
        try:
            info = json.loads(msg.data)
            from vidseg_ros.core.classes import ClassSet
            cs = info['class_set']
            self.class_set = ClassSet(cs['name'], tuple(cs['names']), np.asarray(cs['palette'], np.uint8),
                                      int(cs.get('ignore_index', 255)))
            self.class_map = np.asarray(info['class_map'], np.uint8)
            self.kf_cache_levels = int(info.get('cache_levels', 0) or 0)
            self.kf_region_context = bool(info.get('region_context', False))
        except (ValueError, KeyError, TypeError) as e:
            self.get_logger().error(f'bad keyframe info: {e}')
            return
        self._publish_classes()
        self._try_keyframes()
        self.pump()

    def _publish_classes(self):
        """Publish the class set on the latched topic (again only if the keyframe model's differs)."""
        from std_msgs.msg import String
        if not self.active:
            return
        d = self.class_set.to_dict()
        d['colors'] = d.pop('palette')
        data = json.dumps(d)
        if data != self._classes_sent:
            self.classes_pub.publish(String(data=data))
            self._classes_sent = data

    def on_kf_labels(self, msg):
        self._kf_part(msg, 'labels')

    def on_kf_probs(self, msg):
        self._kf_part(msg, 'probs')

    def on_kf_features(self, msg):
        from vidseg_ros.core.caching import CACHE_KEYS
        from vidseg_ros.core.models.espnetv2 import CONTEXT_KEYS
        name = msg.header.frame_id.rpartition(graph.FEATURE_MAP_TAG)[2] \
            if graph.FEATURE_MAP_TAG in msg.header.frame_id else ''
        if name in self.cache_keys:
            self._kf_part(msg, 'feat:' + name)
        elif name in CACHE_KEYS[max(CACHE_KEYS)] or name in CONTEXT_KEYS:   # maps this node's mode does not use
            self.counts['features_unused'] += 1
        else:
            self.counts['bad_features'] += 1
            self.get_logger().error(f'cached map {name!r} is not one this node knows (frame_id '
                                    f'{msg.header.frame_id!r}; it uses {", ".join(self.cache_keys)})',
                                    throttle_duration_sec=5.0)

    def _needed_parts(self) -> set:
        """Parts that complete a keyframe: labels + probs, and the cached maps when this node runs
        feature caching and the keyframe node says it sends them (if it does not, the module reports each
        frame it cannot refresh and the frame keeps the plain warp: never a keyframe waiting forever)."""
        need = {'labels', 'probs'}
        sends = self.kf_region_context if self.temporal_mode == 'region-ctx' else \
            self.kf_cache_levels >= len(self.cache_keys)
        if self.cache_keys and sends:
            need |= {'feat:' + k for k in self.cache_keys}
        return need

    def _kf_part(self, msg, key):
        if not self.active:
            return
        ns = stamp_to_ns(msg.header.stamp)
        now = time.monotonic()
        self.kf_owed_since = None
        if key == 'labels':
            self.last_kf_result_t = now
            t_img = self.t_images.get(ns)
            if t_img is not None:   # how long after its image this keyframe's result came (keyframe_wait)
                self.kf_delays.append(now - t_img)
            self.newest_kf_result_ns = ns if self.newest_kf_result_ns is None else max(ns, self.newest_kf_result_ns)
            if self.kf_overdue is not None and ns >= self.kf_overdue[0]:
                self.kf_overdue = None
        self.kf_parts.setdefault(ns, {})[key] = msg
        while len(self.kf_parts) > self.cfg['history']:
            self.kf_parts.popitem(last=False)
            self.counts['keyframes_dropped_incomplete'] += 1
        self._try_keyframes()
        self.pump()

    def _try_keyframes(self):
        """Hand complete keyframe results (labels + probs + class map) to the Propagator."""
        if self.class_map is None:
            return
        need = self._needed_parts()
        for ns in [n for n, parts in self.kf_parts.items() if need <= set(parts)]:
            parts = self.kf_parts.pop(ns)
            try:
                sem = semantics_from_msgs(parts['labels'], parts['probs'], self.class_map)
                feats = {k[5:]: v for k, v in parts.items() if k.startswith('feat:')}
                if feats:
                    sem.features = features_from_msgs(feats)
                # a late keyframe's catch-up runs the temporal module on the frames buffered since: not
                # while the node is behind the camera (load shedding, refine_max_lag)
                res = self.prop.set_keyframe(ns, sem, refine=not self._behind(self.done_ns))
            except VidsegError as e:
                self.counts['bad_keyframes'] += 1
                self.get_logger().error(f'keyframe rejected: {e}', throttle_duration_sec=5.0)
                continue
            self.counts[f'keyframes_{res}'] += 1
            if self.two is not None and res in ('applied', 'late', 'partial'):
                # the frame went out (and into the two-sided buffer) before its keyframe result came
                self._two_sided_publish(self.two.keyframe(ns, sem))
            self.decisions[ns] = 'received'

    # -------------------------------------------------------------- join / processing
    def pump(self):
        if not self.active:
            return
        now = time.monotonic()
        p = self.cfg
        if self.two is not None and self.two.max_wait_s is not None:   # the two-sided topic's time bound
            self._two_sided_publish(self.two.expire(now))
        flow_silent = self._silent(self.flow_owed_since, now)
        while self.slots:
            ns, s = next(iter(self.slots.items()))
            overflow = len(self.slots) > p['max_pending']
            complete = s.image is not None and s.has_flow
            timed_out = now - s.t_first > p['flow_timeout']
            if not (complete or timed_out or overflow):
                # both streams arrive in order: a newer flow means this frame's flow is not coming
                # (flow node dropped it), a newer image means this flow's image is not coming
                missing_flow = s.image is not None and any(o.has_flow for o in self.slots.values())
                missing_image = s.has_flow and any(o.image is not None for o in self.slots.values()
                                                   if o is not s)
                if not (missing_flow or missing_image or (flow_silent and s.image is not None)):
                    return
            if complete and p['keyframe_wait'] > 0 and not overflow and now - s.t_ready < self._wait_bound():
                d = self.decisions.get(ns)
                if d is None or d is True:
                    if self._waiting_pays(now):
                        return  # wait for the decision / the keyframe result
                    if d is True:
                        self.counts['keyframe_wait_skipped'] += 1
            del self.slots[ns]
            if overflow and not complete:
                self.counts['dropped_overflow'] += 1
            self._process(s, now)

    def _process(self, s, now):
        p = self.cfg
        if self.decisions.get(s.ns) is True:
            self.counts['keyframe_wait_expired'] += 1
        self.decisions.pop(s.ns, None)
        if s.image is not None:
            size = (int(s.image.width), int(s.image.height))
            if self.size is not None and size != self.size:
                self.get_logger().warning(f'input size changed {self.size} -> {size}: resetting')
                self.counts['resets'] += 1
                self.counts['size_changes'] += 1
                keep = {f: sem for f, sem in self.prop._pending.items() if f >= s.ns}  # new-size keyframes
                self._two_sided_flush()
                self.prop.reset()
                for f, sem in keep.items():
                    self.prop.set_keyframe(f, sem)
            self.size = size
        flow = s.flow if s.has_flow else None
        if not s.has_flow:
            self.counts['flow_timeouts'] += 1
        t0 = time.perf_counter()
        image = None
        if self.prop.refiner is not None and s.image is not None:
            import cv2
            from vidseg_ros.core.pipeline import working_size
            rgb = image_to_rgb(s.image)
            ws = working_size(self.size, p['scale'])
            # own the pixels (the message's bytes are read-only and the refiner's history keeps them)
            image = rgb.copy() if ws == self.size else cv2.resize(rgb, ws, interpolation=cv2.INTER_AREA)
        bwd, fwd = flow if flow is not None else (None, None)
        # the forward flow carries this frame's state back to the previous frame (two-sided) only when
        # it starts there (not across held frames)
        fwd_link = fwd if (s.flow_ref is None or s.flow_ref == self.done_ns) and not self.two_chain_broken else None
        reasons = []
        try:
            shed = s.image is not None and self._behind(s.ns, s.t_image, record=True)   # load shedding
            out = self.prop.step(s.ns, bwd, fwd, image, flow_ref=s.flow_ref, refine=not shed)
        except VidsegError as e:  # still one (degraded) output for the frame
            self.counts['step_errors'] += 1
            self.get_logger().error(f'propagation failed: {e}', throttle_duration_sec=5.0)
            out = self._fallback_output(s.ns)
            reasons.append('step_error')
        if self.two is not None and s.image is not None:
            self.two_frames[s.ns] = (s.image.header, (int(s.image.width), int(s.image.height)))
            if reasons:   # no state for this frame: what is held goes out as it is, then this frame
                self._two_sided_flush()
                self._two_sided_publish([replace(out, frame_id=s.ns)])
            else:
                self._two_sided_publish(self.two.push(out, fwd_link,
                                                      flow_bwd=bwd if fwd_link is not None else None))
            self.two_chain_broken = False
        elif self.two is not None:   # a flow without its image was stepped: no link across it
            self.two_chain_broken = True
        self.done_ns = s.ns if self.done_ns is None else max(self.done_ns, s.ns)
        if s.image is None:
            self.counts['flows_without_image'] += 1
            return
        if out.distance < 0:
            reasons.append('no_keyframe')
        elif out.distance > 0 and self.prop.warp:
            if not s.has_flow:
                reasons.append('flow_missing')
            elif s.flow is None:
                reasons.append('flow_chain_restart')
        if p['max_distance'] and out.distance > p['max_distance']:
            reasons.append('keyframe_too_old')
        reasons += self._source_reasons(now)
        if out.degraded and not reasons:
            reasons.append('labels_held')
        self._publish(s.image, out, s.t_image if s.t_image is not None else now, t0, reasons)

    def _waiting_pays(self, now=None) -> bool:
        """keyframe_wait: does the keyframe result usually come within the bound? The median delay (image
        -> keyframe result) of the last KF_DELAY_HISTORY results must not exceed the bound (_wait_bound); until two
        are measured the frame waits. A network slower than the bound (a budget schedule that runs it in
        parallel over many frames, an overloaded machine, a bound set too short) would otherwise make every
        keyframe frame wait out the bound and still go out without its result: the latency of waiting and
        the accuracy of not waiting. Such a frame goes out at once, without waiting for the keyframe
        node's decision either (that wait only serves the wait for the result); a keyframe frame is counted
        (``keyframe_wait_skipped``). Waiting resumes when the results come back within the bound. Nor does a
        frame wait while the keyframe node is silent (no decision or result for ``source_timeout``: hung or
        gone), unless the bound itself is longer than that silence (a replay that waits through stalls)."""
        p = self.cfg
        if max(p['keyframe_wait'], p['keyframe_wait_max']) < p['source_timeout'] and \
                self._silent(self.kf_owed_since, now):
            return False
        return len(self.kf_delays) < 2 or float(np.median(self.kf_delays)) <= self._wait_bound()

    def _wait_bound(self) -> float:
        """How long a frame may wait for its keyframe decision and result (s): ``keyframe_wait``, or with
        ``keyframe_wait_max`` above it (the default: 0.3 and 0.5 s), the median of the recent keyframe result
        delays x KF_WAIT_FACTOR + KF_WAIT_MARGIN_S, kept between the two (keyframe_wait until two delays are
        measured). Before the first keyframe result (at start-up, after a reset) the bound is the max: there
        is nothing to propagate yet, so a frame that stopped waiting would go out void (``no_keyframe``), and
        the first network pass is the slowest. keyframe_wait 0 (live mode) never waits, whatever the max.
        The fixed 0.3 s default is above a keyframe pass on a quiet 2-core machine; on a day the same machine ran 1.5x
        slower the passes took 0.26-0.34 s, frames stopped waiting and the live labels lost 5-10 mIoU,
        where a 0.5 s bound kept the offline accuracy (BENCHMARKS.md 9.1)."""
        p = self.cfg
        lo, hi = p['keyframe_wait'], p['keyframe_wait_max']
        if lo <= 0 or hi <= lo:
            return lo
        if self.prop.semantics is None:   # nothing to propagate yet
            return hi
        if len(self.kf_delays) < 2:
            return lo
        return float(min(hi, max(lo, float(np.median(self.kf_delays)) * KF_WAIT_FACTOR + KF_WAIT_MARGIN_S)))

    def _behind(self, ns, t_image=None, record: bool = False) -> bool:
        """Load shedding (``refine_max_lag``): has the node fallen so far behind the camera, at the frame
        stamped ``ns`` (received at monotonic ``t_image``), that the temporal module should be skipped on it
        (or, for the newest stepped frame, on a late keyframe's catch-up)? The frame's lag is the largest of:
        its age on the ROS clock (now - its stamp; only where that is plausible, 0-60 s: a bag replayed with
        its old stamps and no /clock has none), how much newer the newest camera frame received is (camera
        time), and how long it waited here. Behind = that lag exceeds the lowest lag of the frames
        processed in the last LAG_WINDOW_S seconds (the pipeline's own latency: the flow's computation and
        transport, which a larger camera image or a slower machine raises without the node falling
        behind) by more than refine_max_lag. ``record``: add the lag to that window (once per processed
        frame). With a temporal module only. Also while frames wait for keyframes (keyframe_wait > 0): the
        frames queued behind a keyframe then lag by the network's time and skip the module first (they are
        the ones nearest the keyframe), which is what keeps a module with keyframe_wait on time at 25 Hz
        (BENCHMARKS 9.1). A replay that must equal the offline pipeline sets refine_max_lag 0."""
        p = self.cfg
        lim = p['refine_max_lag']
        if lim <= 0 or self.prop.refiner is None or ns is None:
            return False
        now = time.monotonic()
        newest = next((n for n, o in reversed(self.slots.items()) if o.image is not None), ns)
        lag = max((newest - ns) * 1e-9, now - t_image if t_image is not None else 0.0)
        age = (self.get_clock().now().nanoseconds - ns) * 1e-9
        if 0.0 <= age <= PLAUSIBLE_AGE_S:
            lag = max(lag, age)
        w = self.lags
        while w and now - w[0][0] > LAG_WINDOW_S:
            w.popleft()
        base = min([v for _, v in w] + [lag])
        if record:
            w.append((now, lag))
        return lag - base > lim

    def _two_sided_publish(self, outs):
        """Publish released two-sided outputs on their camera headers (labels resized to the image)."""
        import cv2
        for o in outs:
            hdr_size = self.two_frames.pop(o.frame_id, None)
            if hdr_size is None:   # a flow without its image: nothing to publish it on
                self.counts['two_sided_no_image'] += 1
                continue
            hdr, size = hdr_size
            labels = o.labels
            if (labels.shape[1], labels.shape[0]) != size:
                labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            self.two_pub.publish(ndarray_to_image(labels, 'mono8', hdr))
            self.counts['two_sided_out'] += 1
            kind = 'keyframes' if o.is_keyframe else 'fused' if o.lookahead else 'forward_only'
            self.counts[f'two_sided_{kind}'] += 1

    def _two_sided_flush(self):
        """Publish every frame still waiting for its next keyframe, forward-only (nothing is lost)."""
        if self.two is not None:
            self._two_sided_publish(self.two.flush())

    def _fallback_output(self, ns):
        from vidseg_ros.core.propagation import FrameOutput
        out = self.prop.current_output()
        if out is None:  # no semantics yet: void labels
            out = FrameOutput(ns, np.full((1, 1), 255, np.uint8), np.zeros((1, 1), np.float32), False, -1, True)
        out.degraded = True
        return out

    def _out_of_order(self, msg, ns):
        """An image older than the newest processed frame: labels from the current state (degraded)."""
        self.counts['out_of_order'] += 1
        out = self._fallback_output(ns)
        self._publish(msg, out, time.monotonic(), time.perf_counter(), ['out_of_order'])
        if self.two is not None:   # on the two-sided topic as well, as it is (its place has passed)
            self.two_frames[ns] = (msg.header, (int(msg.width), int(msg.height)))
            self._two_sided_publish([replace(out, frame_id=ns)])

    def _publish(self, img_msg, out, t_recv, t0, reasons=()):
        import cv2
        from vidseg_ros.core.classes import colorize
        size = (int(img_msg.width), int(img_msg.height))
        labels = out.labels
        if (labels.shape[1], labels.shape[0]) != size:
            labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        hdr = img_msg.header
        self.labels_pub.publish(ndarray_to_image(labels, 'mono8', hdr))
        # the colour and confidence images are built only while someone subscribes to them
        if self.color_pub is not None and self.color_pub.get_subscription_count() > 0:
            self.color_pub.publish(ndarray_to_image(colorize(labels, self.class_set), 'rgb8', hdr))
        if self.conf_pub is not None and self.conf_pub.get_subscription_count() > 0:
            conf = np.clip(np.rint(out.confidence * 255.0), 0, 255).astype(np.uint8)
            if (conf.shape[1], conf.shape[0]) != size:
                conf = cv2.resize(conf, size, interpolation=cv2.INTER_LINEAR)
            self.conf_pub.publish(ndarray_to_image(conf, 'mono8', hdr))
        cost = time.perf_counter() - t0
        self.cost.add(cost)
        done = time.monotonic()
        self.latency.add(done - t_recv)
        now_ns = self.get_clock().now().nanoseconds
        self.age.add(max(0, now_ns - stamp_to_ns(hdr.stamp)) * 1e-9)
        self.out_rate.tick(done)
        self.counts['frames_out'] += 1
        degraded = bool(out.degraded or reasons)
        if degraded:
            self.counts['degraded'] += 1
            for r in reasons:
                self.counts[f'degraded_{r}'] += 1
        self._status(hdr, True, degraded, reasons, out)
        if out.distance == 0:
            self.counts['keyframe_frames'] += 1
        from std_msgs.msg import String
        st = {'stamp_ns': stamp_to_ns(hdr.stamp), 'cost_s': cost, 'distance': int(out.distance),
              'degraded': degraded, 'reasons': list(reasons), 'temporal_mode': self.temporal_mode,
              'refined_frames': int(self.prop.stats.get('refined_frames', 0)),
              'refine_skipped': int(self.prop.stats.get('refine_skipped', 0))}
        if out.mask is not None:
            st['inconsistent_fraction'] = float(out.inconsistent_fraction)
            if out.distance > 0 and self.prop.warp:
                self.recent_fractions.append(float(out.inconsistent_fraction))
        st.update(self._context_counts())
        self.stats_pub.publish(String(data=json.dumps(st)))

    def _context_counts(self) -> dict:
        """region-ctx: tiles run with the keyframe's context / without it (no grids came with the keyframe)."""
        r = getattr(self.prop, 'refiner', None)
        if not hasattr(r, 'context_used'):
            return {}
        return {'region_context_used': int(r.context_used), 'region_context_missing': int(r.context_missing)}

    def diagnostics(self):
        c = self.counts
        frames = max(c['frames_out'], 1)
        drops = c['dropped_overflow'] + c['late_flows'] + c['flows_without_image']
        unpublished = c['bad_images'] + c['duplicate_images']  # input frames without labels
        notes, warn = [], False   # the status message's parts; WARN when any part says something is wrong

        def note(text, is_warning=True):
            nonlocal warn
            notes.append(text)
            warn = warn or is_warning

        src = self._source_reasons(time.monotonic())
        if c['degraded'] or drops or unpublished or src:
            note(f'{c["degraded"]} degraded, {unpublished} without labels, {drops} dropped/late'
                 + (f'; {", ".join(src)}' if src else ''))
        if c['flow_timeouts']:   # frames that waited out flow_timeout: did any flow arrive at all?
            note(f'{c["flow_timeouts"]} frame(s) waited out flow_timeout; {c["flows_in"]} flow message(s) received')
        merr = int(self.prop.stats.get('module_errors', 0))
        if merr:   # the temporal module failed on some frames (they kept the plain warp)
            err = getattr(self.prop, 'last_module_error', '')
            note(f'temporal module {self.temporal_mode} failed on {merr} frame(s), plain warp used: {err}')
        ps = self.prop.stats
        shed, shed_cu = int(ps.get('refine_skipped', 0)), int(ps.get('catch_up_refine_skipped', 0))
        if shed or shed_cu:   # load shedding: the node fell behind the camera and skipped its temporal module
            note(f'temporal module {self.temporal_mode} skipped on {shed} of {ps["frames"]} frame(s) '
                 f'and {shed_cu} catch-up step(s) to keep up (lagging the camera by more than refine_max_lag '
                 f'{self.cfg["refine_max_lag"]} s beyond the pipeline\'s own latency)')
        kf_delay = float(np.median(self.kf_delays)) if self.kf_delays else None   # image -> keyframe result
        if c['keyframe_wait_skipped']:   # keyframe results come later than keyframe_wait: frames do not wait
            note(f'{c["keyframe_wait_skipped"]} keyframe frame(s) did not wait: keyframe results came after a median '
                 f'{kf_delay or float("nan"):.2f} s, more than keyframe_wait {self.cfg["keyframe_wait"]} s'
                 + (f' (adaptive up to keyframe_wait_max {self.cfg["keyframe_wait_max"]} s)'
                    if self.cfg['keyframe_wait_max'] > self.cfg['keyframe_wait'] else ''), is_warning=False)
        stale = sum(self.recent_stale_stamps)
        if stale >= STALE_STAMPS_MIN and 2 * stale > len(self.recent_stale_stamps):
            # e.g. a driver that leaves header.stamp at 0 or never advances it
            note(f'{stale} of the last {len(self.recent_stale_stamps)} camera frames came with a stamp not newer '
                 f'than the newest frame processed (out_of_order / duplicate_stamp): is the camera\'s '
                 f'header.stamp set and increasing? Flow, keyframes and labels are joined by stamp')
        far = fraction_stats(self.recent_fractions)
        if frames_far_apart(far):   # labels carried onto the wrong content: a low camera rate, dropped frames
            note(f"labels failed the flow's forward-backward check (IAM) on {100 * far['median']:.0f} % of the "
                 f"median of the last {far['frames']} propagated frames (driving video at 10-25 Hz: 4-21 %): "
                 f"frames too far apart in time for propagation (camera rate, dropped frames?); a shorter "
                 f"keyframe interval or the adaptive schedule helps")
        level, msg = diag_level('WARN' if warn else 'OK'), '; '.join(notes) or 'running'
        vals = {'input_rate_hz': self.in_rate.rate(), 'output_rate_hz': self.out_rate.rate(),
                'keyframe_ratio': c['keyframe_frames'] / frames, 'pending': len(self.slots),
                'drops': drops, 'degraded': c['degraded'], 'unpublished': unpublished,
                'sources': ','.join(src) or 'ok', 'pid': os.getpid()}
        vals.update({f'latency_{k}': v for k, v in self.latency.summary().items()})
        vals.update({f'age_{k}': v for k, v in self.age.summary().items()})
        vals.update({f'cost_{k}': v for k, v in self.cost.summary().items()})
        vals.update(dict(c))
        vals.update({f'propagator_{k}': v for k, v in self.prop.stats.items()})
        vals.update(self._context_counts())
        if far is not None:
            vals['inconsistent_fraction_median'] = far['median']
        if kf_delay is not None:
            vals['kf_delay_median_s'] = kf_delay
        if self.cfg['keyframe_wait'] > 0:
            vals['keyframe_wait_bound_s'] = self._wait_bound()
        if self.two is not None:   # frames waiting for their next keyframe on the two-sided topic
            vals['two_sided_waiting'] = len(self.two)
            vals['two_sided_trusted'] = self.two.stats['trusted']   # fused with both chains' trust maps
        return [('', level, msg, vals)]



def main(args=None) -> int:
    return run_node(PropagationNode, args)


if __name__ == '__main__':
    sys.exit(main())
