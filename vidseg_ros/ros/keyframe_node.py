"""keyframe_node: runs the keyframe network on the frames the active schedule selects.

Subscribes ``/camera/image_raw``; per frame the schedule (parameter ``schedule``: 'fixed:5',
'adaptive:...', 'budget:...' or a JSON dict; switchable at run time, e.g. by the lifecycle manager
with SetParameters) decides whether it is a keyframe. The network runs on a worker thread; frames
arriving meanwhile are skipped (counted) and the schedule decides on the newest one when the worker is
free, so nothing queues without bound. For a keyframe it publishes, stamped with that frame's header:

* ``/vidseg/keyframe/decision`` (std_msgs/String JSON ``{"stamp_ns", "keyframe", "reason"}``) for EVERY
  frame right away (``reason``: 'schedule' or 'busy' for frames skipped while the network ran), so the
  propagation node can wait (bounded, ``keyframe_wait``) for a result it knows is coming;
* ``/vidseg/keyframe/labels`` (mono8 class ids at the working resolution);
* ``/vidseg/keyframe/probs`` (``8UC(K)``: uint8 quantised probabilities at 1/4 working resolution);
* with ``cache_levels`` > 0 (feature caching, ``temporal_mode:=cache1|cache2``), before those two, the
  network's cached high-level maps on ``/vidseg/keyframe/features``: one ``32FC(C)`` Image per map at
  its own resolution (1/16 and 1/8 of the network input), ``header.frame_id`` = the camera's +
  ``#map=<name>`` (``core.caching.CachedFeatureRefresher``); with ``region_context`` (``temporal_mode:=
  region-ctx``) the same topic carries the network's global context grids ``#map=ctx1..ctx4``
  (``core.region.KeyframeContext``, about 10x5x5 to 10x13x26 each);

and once, latched, ``/vidseg/keyframe/info`` (std_msgs/String JSON: model, class set, class_map).
``/vidseg/propagation/stats`` (JSON from the propagation node) feeds the adaptive/budget schedules.

Reliability: NaN/Inf network outputs become void pixels (counted; a keyframe with > 50 % of them is
rejected); a resolution change, a time jump > ``max_gap`` or time going backwards forces a keyframe; a
network pass longer than ``stuck_timeout`` is reported as ERROR ``stuck`` on /diagnostics (the lifecycle
manager then restarts the node); the node's pid is in its diagnostics. See RELIABILITY.md.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from vidseg_ros.core.errors import ConfigError, InputError, VidsegError
from vidseg_ros.core.models.base import sanitize_segmentation
from vidseg_ros.ros import graph
from vidseg_ros.ros.common import (LatencyStats, RateCounter, Worker, check, diag_level, input_qos,
                                   latched_qos, reliable_qos, run_node)
from vidseg_ros.ros.conversions import ConversionError, generic_encoding, image_to_rgb, ndarray_to_image, stamp_to_ns
from vidseg_ros.ros.lifecycle_base import VidsegLifecycleNode


def parse_size(text: str):
    """'512x256' -> (512, 256); '' -> None."""
    t = str(text).strip().lower()
    if not t:
        return None
    try:
        w, h = (int(v) for v in t.split('x'))
        if w > 0 and h > 0:
            return (w, h)
    except ValueError:
        pass
    raise ConfigError(f"size must look like '512x256', got {text!r}")


def working_size(size_wh, scale: int) -> tuple:
    """Working resolution (w, h) for an input size and downscale D (the core's rule when it has one)."""
    try:
        from vidseg_ros.core.pipeline import working_size as _ws  # type: ignore
        return tuple(_ws(size_wh, scale))
    except ImportError:
        w, h = size_wh
        return (max(1, int(round(w / scale))), max(1, int(round(h / scale))))


def make_semantics_fn(model, scale: int, on_nonfinite=None, cache_levels: int = 0, region_context: bool = False):
    """rgb -> core Semantics of the keyframe (the same calls the offline pipeline makes), with non-finite
    network outputs sanitised (``on_nonfinite(n_bad_pixels)`` is called when there were any). With
    ``cache_levels`` the network runs split (``caching.CachedFeatureRefresher``) and the Semantics
    carry its cached maps (``features``); with ``region_context`` they carry its decoder's global context
    grids (``region.KeyframeContext``, for temporal_mode region-ctx)."""
    from vidseg_ros.core.propagation import semantics_from_segmentation

    if cache_levels and region_context:
        raise ConfigError('cache_levels and region_context are for different temporal modes: set one')
    if cache_levels or region_context:
        if cache_levels:
            from vidseg_ros.core.caching import CachedFeatureRefresher
            cacher = CachedFeatureRefresher(model, cache_levels)
        else:
            from vidseg_ros.core.region import KeyframeContext
            cacher = KeyframeContext(model)

        def fn_cached(rgb):
            sem, bad = cacher.keyframe_semantics(rgb, working_size((rgb.shape[1], rgb.shape[0]), scale))
            if bad and on_nonfinite is not None:
                on_nonfinite(bad)
            return sem
        return fn_cached

    def fn(rgb):
        seg, bad = sanitize_segmentation(model.segment(rgb))
        if bad and on_nonfinite is not None:
            on_nonfinite(bad)
        return semantics_from_segmentation(seg, model.output_to_class,
                                           working_size((rgb.shape[1], rgb.shape[0]), scale))
    return fn


def semantics_to_msgs(sem, header):
    """core Semantics -> (labels mono8 Image, probs 8UC(K) Image or None)."""
    labels = ndarray_to_image(sem.labels, 'mono8', header)
    probs = None
    if sem.probs is not None:
        hwk = np.ascontiguousarray(sem.probs.transpose(1, 2, 0))
        if hwk.shape[2] == 1:
            hwk = hwk[:, :, 0]
        probs = ndarray_to_image(hwk, generic_encoding(np.uint8, sem.probs.shape[0]), header)
    return labels, probs


def features_to_msgs(sem, header) -> list:
    """The cached maps of ``sem.features`` -> one ``32FC(C)`` Image each (HWC), tagged in frame_id."""
    from std_msgs.msg import Header
    out = []
    for name, fmap in sorted((sem.features or {}).items()):
        hwc = np.ascontiguousarray(np.asarray(fmap, np.float32).transpose(1, 2, 0))
        h = Header(stamp=header.stamp, frame_id=f'{header.frame_id}{graph.FEATURE_MAP_TAG}{name}')
        out.append(ndarray_to_image(hwc, generic_encoding(np.float32, hwc.shape[2]), h))
    return out


def _transfer_history(old, new):
    """Keep the last-keyframe bookkeeping across a schedule switch (no forced keyframe)."""
    if old is None:
        return
    for attr in ('_last_kf', '_last_kf_time', '_last_index'):
        if hasattr(old, attr) and hasattr(new, attr):
            setattr(new, attr, getattr(old, attr))


class KeyframeNode(VidsegLifecycleNode):
    # applied at run time (the rest are read on configure); schedule: the lifecycle manager's switch
    LIVE_PARAMS = ('schedule', 'max_gap', 'stuck_timeout')

    def __init__(self, **kw):
        super().__init__('keyframe_node', **kw)

    def declare_params(self):
        self.declare('model', 'default', 'model registry name, config yaml or model file')
        self.declare('weights', '', 'weights file overriding the model spec (empty = from the spec)')
        self.declare('device', 'cpu', "'cpu' or 'cuda[:N]'")
        self.declare('backend', 'auto', "'auto', 'torch', 'torchscript' or 'onnxruntime'")
        self.declare('input_size', '', "network input WxH overriding the model's, e.g. '512x256'")
        self.declare('num_threads', 0, 'torch/onnxruntime threads (0 = library default)', int_range=(0, 256))
        self.declare('scale', 1, 'working-resolution downscale D (labels at input/D)', int_range=(1, 16))
        self.declare('schedule', 'fixed:5', "keyframe schedule: 'fixed:5', 'adaptive:...', 'budget:...', JSON")
        self.declare('input_qos', 'sensor_data', "camera QoS: 'sensor_data' (best effort) or 'reliable'")
        self.declare('queue_depth', 5, 'camera subscription depth', int_range=(1, 1000))
        self.declare('warmup', True, 'run the network once on configure (steady first-keyframe latency)')
        self.declare('stuck_timeout', 30.0, 'seconds one network pass may take before the node reports '
                     'itself stuck (ERROR on /diagnostics; the lifecycle manager restarts it; 0 = off)',
                     float_range=(0.0, 3600.0))
        self.declare('max_gap', 0.0, 'seconds between frames above which a keyframe is forced (0 = off)',
                     float_range=(0.0, 3600.0))
        self.declare('cache_levels', 0, 'feature caching (propagation node temporal_mode cache1/cache2): '
                     'publish 1 or 2 levels of the network\'s cached maps with each keyframe (0 = off; '
                     'ESPNetv2 only)', int_range=(0, 2))
        self.declare('region_context', False, 'region refresh with context (propagation node temporal_mode '
                     'region-ctx): publish the network\'s global context grids with each keyframe (ESPNetv2 only)')

    # ------------------------------------------------------------------ parameters at run time
    def check_live_param(self, name, value):
        if name == 'schedule':
            from vidseg_ros.core.schedule import make_schedule
            make_schedule(graph.parse_schedule(value))

    def apply_live_param(self, name, value):
        if name != 'schedule':
            return super().apply_live_param(name, value)
        from vidseg_ros.core.schedule import make_schedule
        sched = make_schedule(graph.parse_schedule(value))
        with self.lock:
            self._next_schedule = sched
        self.get_logger().info(f'schedule -> {sched!r}')

    # ------------------------------------------------------------------ lifecycle
    def configure(self):
        import torch
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from vidseg_ros.core.models import load_model
        from vidseg_ros.core.schedule import make_schedule
        p = self.params('model', 'weights', 'device', 'backend', 'input_size', 'num_threads', 'scale',
                        'schedule', 'input_qos', 'queue_depth', 'warmup', 'stuck_timeout', 'max_gap',
                        'cache_levels', 'region_context')
        qos = input_qos(p['input_qos'], p['queue_depth'])
        try:
            self.schedule = make_schedule(graph.parse_schedule(p['schedule']))
        except VidsegError as e:
            raise ConfigError(f'parameter schedule: {e}') from None
        self._next_schedule = None
        size = parse_size(p['input_size'])
        check(p['model'] != '', 'model must not be empty')
        if p['num_threads'] > 0:
            torch.set_num_threads(p['num_threads'])
        t0 = time.perf_counter()
        self.model = load_model(p['model'], weights=p['weights'] or None, device=p['device'],
                                backend=p['backend'], input_size=size,
                                num_threads=p['num_threads'] or None)
        self.get_logger().info(f'model {self.model!r} loaded in {time.perf_counter() - t0:.2f}s; '
                               f'schedule {self.schedule!r}')
        self.cfg = p
        self.semantics_fn = make_semantics_fn(self.model, p['scale'], on_nonfinite=self._on_nonfinite,
                                              cache_levels=p['cache_levels'], region_context=p['region_context'])
        if p['warmup']:
            w, h = self.model.input_size
            self.model.segment(np.zeros((h, w, 3), np.uint8))
        self.counts = dict(frames=0, keyframes=0, skipped_busy=0, bad_images=0, errors=0, dropped_inactive=0,
                           restarts=0, nonfinite_keyframes=0, nonfinite_pixels=0, forced_size_change=0,
                           forced_gap=0, forced_frame_id_change=0, duplicate_stamps=0)
        self.last_ns = None
        self.last_size = None
        self.last_frame_id = None
        self.busy_since = None   # monotonic start of the running network pass
        self.rate = RateCounter()
        self.latency = LatencyStats()
        self.frame_index = 0
        self.last_stats = {}
        self.labels_pub = self.pub(Image, graph.KEYFRAME_LABELS_TOPIC, reliable_qos(10))
        self.probs_pub = self.pub(Image, graph.KEYFRAME_PROBS_TOPIC, reliable_qos(10))
        self.features_pub = self.pub(Image, graph.KEYFRAME_FEATURES_TOPIC, reliable_qos(10)) \
            if p['cache_levels'] or p['region_context'] else None
        self.decision_pub = self.pub(String, graph.KEYFRAME_DECISION_TOPIC, reliable_qos(50))
        self.info_pub = self.pub(String, graph.KEYFRAME_INFO_TOPIC, latched_qos())
        self.info = {'model': self.model.name, 'class_set': self.model.class_set.to_dict(),
                     'class_map': [int(v) for v in self.model.output_to_class],
                     'num_outputs': int(self.model.num_outputs), 'input_size': list(self.model.input_size),
                     'scale': p['scale'], 'cache_levels': p['cache_levels'],
                     'region_context': p['region_context']}
        self.worker = None
        self.camera_sub(self.on_image_raw, qos)
        self.sub(String, graph.STATS_TOPIC, self.on_stats, reliable_qos(10))

    def activate(self):
        from std_msgs.msg import String
        self.worker = Worker(self._process, 'keyframe_worker', on_skip=self._on_skip)
        self._info_published = False
        self._publish_info = lambda: self.info_pub.publish(String(data=json.dumps(self.info)))

    def deactivate(self):
        if getattr(self, 'worker', None) is not None:  # (configure may have failed before the worker)
            self.worker.stop()
            self.counts['skipped_busy'] += self.worker.skipped
            self.worker = None

    def teardown(self):
        self.deactivate()

    # ------------------------------------------------------------------ data
    def on_stats(self, msg):
        try:
            s = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(s, dict):
            self.last_stats = s
            cost = s.get('cost_s')
            if cost is not None and getattr(self, 'schedule', None) is not None:
                with self.lock:
                    self.schedule.observe(False, float(cost))

    def on_image_raw(self, raw: bytes):
        """The camera subscription, serialized: frames the busy network skips are never converted
        (``image_from_cdr`` reads the header and keeps the pixels as a view of the message bytes)."""
        msg = self.camera_message(raw)
        if msg is not None:
            self.on_image(msg)

    def on_image(self, msg):
        with self.lock:
            if not self.active or self.worker is None:
                if hasattr(self, 'counts'):
                    self.counts['dropped_inactive'] += 1
                return
            self.track_camera(msg.header.frame_id)
            if not self._info_published:  # after activation: the latched publisher is enabled now
                self._publish_info()
                self._info_published = True
            idx = self.frame_index
            self.frame_index += 1
            self.counts['frames'] += 1
            self.rate.tick()
            self.worker.submit((idx, msg))

    def _decision(self, msg, keyframe: bool, reason: str):
        from std_msgs.msg import String
        self.decision_pub.publish(String(data=json.dumps(
            {'stamp_ns': stamp_to_ns(msg.header.stamp), 'keyframe': bool(keyframe), 'reason': reason})))

    def _on_skip(self, item):
        self._decision(item[1], False, 'busy')

    def _process(self, item):
        idx, msg = item
        with self.lock:
            if not self.active:
                return
            if self._next_schedule is not None:
                _transfer_history(self.schedule, self._next_schedule)
                self.schedule, self._next_schedule = self._next_schedule, None
            stats = dict(self.last_stats)
            stats['timestamp'] = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            stats.pop('force', None)
            ns = stamp_to_ns(msg.header.stamp)
            size = (int(msg.width), int(msg.height))
            if self.last_ns is not None and ns < self.last_ns:  # stream restarted (bag loop)
                stats['force'] = True
                self.counts['restarts'] += 1
            elif self.last_ns is not None and ns == self.last_ns:
                self.counts['duplicate_stamps'] += 1
            elif self.last_ns is not None and self.cfg['max_gap'] > 0 \
                    and (ns - self.last_ns) * 1e-9 > self.cfg['max_gap']:
                stats['force'] = True  # time jump: the flow chain restarts, so does the semantics
                self.counts['forced_gap'] += 1
            if self.last_size is not None and size != self.last_size and size[0] > 0 and size[1] > 0:
                stats['force'] = True  # resolution change: propagation state is reset downstream
                self.counts['forced_size_change'] += 1
                self.get_logger().warning(f'input size changed {self.last_size} -> {size}: forcing a keyframe')
            fid = msg.header.frame_id
            if self.last_frame_id is not None and fid != self.last_frame_id:
                stats['force'] = True  # another camera: the flow chain restarts, the semantics must too
                self.counts['forced_frame_id_change'] += 1
                self.get_logger().warning(f'camera frame_id changed {self.last_frame_id!r} -> {fid!r}: forcing a '
                                          'keyframe', throttle_duration_sec=5.0)
            self.last_frame_id = fid
            self.last_ns = ns
            if size[0] > 0 and size[1] > 0:
                self.last_size = size
            kf = self.schedule.is_keyframe(idx, stats)
        rgb = None
        if kf:
            try:
                rgb = image_to_rgb(msg)
            except ConversionError as e:
                self.counts['bad_images'] += 1
                self.get_logger().error(str(e), throttle_duration_sec=5.0)
                kf = False
        self._decision(msg, kf, 'schedule')
        if not kf:
            return
        t0 = time.perf_counter()
        self.busy_since = time.monotonic()
        try:
            sem = self.semantics_fn(rgb)
        except Exception as e:  # noqa: BLE001 - a failing frame must not stop the node
            self.counts['errors'] += 1
            if isinstance(e, InputError) and 'non-finite' in str(e):
                self.counts['nonfinite_keyframes'] += 1
            msg_text = str(e).strip().splitlines()[0] if str(e).strip() else ''
            self.get_logger().error(f'keyframe failed: {type(e).__name__}: {msg_text}',
                                    throttle_duration_sec=5.0)
            return
        finally:
            self.busy_since = None
        cost = time.perf_counter() - t0
        labels, probs = semantics_to_msgs(sem, msg.header)
        if self.features_pub is not None:   # before the labels, which complete the join downstream
            for m in features_to_msgs(sem, msg.header):
                self.features_pub.publish(m)
        if probs is not None:
            self.probs_pub.publish(probs)  # probs first: the propagation node joins on labels
        self.labels_pub.publish(labels)
        with self.lock:
            self.schedule.observe(True, cost)
            self.counts['keyframes'] += 1
        self.latency.add(cost)

    def _on_nonfinite(self, n_pixels: int):
        self.counts['nonfinite_keyframes'] += 1
        self.counts['nonfinite_pixels'] += int(n_pixels)
        self.get_logger().warning(f'network output had {n_pixels} pixels with NaN/Inf: set to void',
                                  throttle_duration_sec=5.0)

    def busy_seconds(self) -> float:
        """How long the running network pass has taken so far (0 when idle)."""
        t = self.busy_since
        return 0.0 if t is None else time.monotonic() - t

    def diagnostics(self):
        skipped = self.counts['skipped_busy'] + (self.worker.skipped if self.worker else 0)
        frames = max(self.counts['frames'], 1)
        busy = self.busy_seconds()
        vals = dict(self.counts, skipped_busy=skipped, keyframe_ratio=self.counts['keyframes'] / frames,
                    input_rate_hz=self.rate.rate(), schedule=repr(self.schedule), busy_s=busy, pid=os.getpid(),
                    **self.latency.summary())
        st = self.cfg['stuck_timeout']
        if st > 0 and busy > st:
            vals['stuck'] = True
            return [('', diag_level('ERROR'), f'stuck: network pass running for {busy:.1f}s', vals)]
        if self.counts['nonfinite_keyframes']:
            return [('', diag_level('WARN'), f'{self.counts["nonfinite_keyframes"]} keyframes with NaN/Inf '
                     'outputs', vals)]
        return [('', diag_level('OK'), 'running', vals)]


def main(args=None) -> int:
    return run_node(KeyframeNode, args)


if __name__ == '__main__':
    sys.exit(main())
