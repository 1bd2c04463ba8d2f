"""flow_node: DIS optical flow between consecutive camera frames.

Subscribes ``/camera/image_raw`` (remappable; rgb8/bgr8/mono8/rgba8/bgra8/yuv/nv12/bayer/...), publishes
``/vidseg/flow`` as sensor_msgs/Image ``32FC4`` (backward dx, dy = flow(t, t-1) on t's grid; forward
dx, dy = flow(t-1, t)) or ``32FC2`` (backward only, ``forward:=false``) at the flow's native (coarse)
resolution, with the newer frame's stamp; its ``header.frame_id`` is the camera's followed by
``#ref_ns=<stamp of the older frame in ns>`` (:func:`flow_frame_id`), the frame the flow starts from (the
previous frame this node received, so across a frame lost before it), read back with
:func:`parse_flow_frame_id`. A 0x0 message marks a chain start (first frame, size change, time going
backwards, time jump > ``max_gap``, a frame whose flow cannot be computed: frames too small for DIS,
counted as ``flow_errors``, WARN) where no flow exists (no ``#ref_ns``). Broken images and repeated
stamps are dropped (counted in /diagnostics, with the pid). All computation is ``core.flow`` /
``core.pipeline``. The camera is taken serialized (``image_from_cdr``: no per-message conversion of
the pixels).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from vidseg_ros.core.errors import VidsegError
from vidseg_ros.ros import graph
from vidseg_ros.ros.common import (LatencyStats, RateCounter, check, diag_level, input_qos, reliable_qos,
                                   run_node)
from vidseg_ros.ros.conversions import (ConversionError, empty_image, image_from_cdr, image_to_rgb,
                                        ndarray_to_image, stamp_to_ns)
from vidseg_ros.ros.lifecycle_base import VidsegLifecycleNode

REF_TAG = '#ref_ns='   # /vidseg/flow header.frame_id = <camera frame_id>#ref_ns=<older frame's stamp, ns>


def flow_frame_id(frame_id: str, ref_ns: int) -> str:
    """header.frame_id of a /vidseg/flow message: the camera's frame id + the reference stamp."""
    return f'{frame_id}{REF_TAG}{int(ref_ns)}'


def parse_flow_frame_id(frame_id: str):
    """(camera frame_id, reference stamp ns | None) of a /vidseg/flow header.frame_id (None: not given,
    e.g. a chain start or another publisher; the flow is then taken to start at the previous frame)."""
    head, tag, ref = frame_id.rpartition(REF_TAG)
    if not tag:
        return frame_id, None
    try:
        return head, int(ref)
    except ValueError:
        return frame_id, None


def make_flow_fn(method: str = 'dis', preset: str = 'ultrafast', forward: bool = True):
    """(prev_gray, cur_gray) at working resolution -> (flow_bwd, flow_fwd | None) at the flow's native
    resolution: the same calls as ``VideoSegmenter`` (``FlowEstimator.compute_native``)."""
    from vidseg_ros.core.flow import FlowEstimator
    est = FlowEstimator(method=method, preset=preset) if method == 'dis' else FlowEstimator(method=method)

    def fn(prev, cur):
        if not forward:
            return est.compute_native(cur, prev), None
        fwd, bwd = est.forward_backward(prev, cur, native=True)  # = compute_native both ways, one downscale
        return bwd, fwd
    return fn


def working_gray(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Input RGB -> grey working-resolution frame, exactly as ``VideoSegmenter.process`` makes it."""
    import cv2
    from vidseg_ros.core.pipeline import working_size
    size = (rgb.shape[1], rgb.shape[0])
    ws = working_size(size, scale)
    work = rgb if ws == size else cv2.resize(rgb, ws, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)


class FlowNode(VidsegLifecycleNode):
    LIVE_PARAMS = ('max_gap',)   # applied at run time; the rest are read on configure

    def __init__(self, **kw):
        super().__init__('flow_node', **kw)

    def declare_params(self):
        self.declare('scale', 1, 'working-resolution downscale D (flow on input/D)', int_range=(1, 16))
        self.declare('method', 'dis', "flow method: 'dis' or 'farneback'")
        self.declare('preset', 'ultrafast', "DIS preset: 'ultrafast', 'fast' or 'medium'")
        self.declare('forward', True, 'also compute the forward flow (needed by the IAM)')
        self.declare('input_qos', 'sensor_data', "camera QoS: 'sensor_data' (best effort) or 'reliable'")
        self.declare('queue_depth', 5, 'camera subscription depth', int_range=(1, 1000))
        self.declare('max_gap', 0.0, 'seconds between frames above which the flow chain restarts (0 = off)',
                     float_range=(0.0, 3600.0))

    def configure(self):
        from sensor_msgs.msg import Image
        p = self.params('scale', 'method', 'preset', 'forward', 'input_qos', 'queue_depth', 'max_gap')
        check(p['method'] in ('dis', 'farneback'), f"method must be 'dis' or 'farneback', got {p['method']!r}")
        qos = input_qos(p['input_qos'], p['queue_depth'])
        self.cfg = p
        self.flow_fn = make_flow_fn(p['method'], p['preset'], p['forward'])
        self.encoding = '32FC4' if p['forward'] else '32FC2'
        self.prev = None  # (stamp_ns, grey working-resolution frame)
        self.frames = RateCounter()
        self.latency = LatencyStats()
        self.last_flow_error = None   # the newest frame whose flow could not be computed: its error
        self.counts = dict(frames=0, flows=0, flow_errors=0, chain_starts=0, bad_images=0, dropped_inactive=0,
                           duplicate_stamps=0,
                           size_changes=0, frame_id_changes=0, time_backwards=0, gaps=0)
        self.flow_pub = self.pub(Image, graph.FLOW_TOPIC, reliable_qos(10))
        self.camera_sub(self.on_image, qos)

    def deactivate(self):
        self.prev = None

    def on_image(self, msg):
        """A camera Image, or its serialized bytes (the subscription: fields and a view of the pixels,
        no conversion)."""
        from std_msgs.msg import Header
        if not self.active:
            self.counts['dropped_inactive'] += 1
            return
        t0 = time.perf_counter()
        try:
            if isinstance(msg, bytes):
                msg = image_from_cdr(msg)
            rgb = image_to_rgb(msg)
        except ConversionError as e:
            self.counts['bad_images'] += 1
            self.get_logger().error(str(e), throttle_duration_sec=5.0)
            return
        ns = stamp_to_ns(msg.header.stamp)
        frame_id = msg.header.frame_id
        self.track_camera(frame_id)
        prev = self.prev
        if prev is not None and ns == prev[0]:  # a repeated stamp: no new frame, no flow
            self.counts['duplicate_stamps'] += 1
            self.get_logger().warning(f'duplicate image stamp {ns}: dropped', throttle_duration_sec=5.0)
            return
        gray = working_gray(rgb, self.cfg['scale'])
        self.counts['frames'] += 1
        self.frames.tick()
        gap = self.cfg['max_gap']
        restart = None
        if prev is None:
            restart = 'first frame'
        elif prev[1].shape != gray.shape:
            restart, key = f'input size changed {prev[1].shape[::-1]} -> {gray.shape[::-1]}', 'size_changes'
        elif frame_id != prev[2]:   # another camera: flow between the two means nothing
            restart, key = f'camera frame_id changed {prev[2]!r} -> {frame_id!r}', 'frame_id_changes'
        elif ns < prev[0]:
            restart, key = 'time went backwards', 'time_backwards'
        elif gap > 0 and (ns - prev[0]) * 1e-9 > gap:
            restart, key = f'time jump {(ns - prev[0]) * 1e-9:.3f}s > max_gap', 'gaps'
        flows = None
        if restart is not None:
            if prev is not None:
                self.counts[key] += 1
                self.get_logger().warning(f'{restart}: restarting the flow chain', throttle_duration_sec=5.0)
        else:
            try:
                flows = self.flow_fn(prev[1], gray)
            except VidsegError as e:   # e.g. frames too small for DIS: a chain start, never the node's end
                self.counts['flow_errors'] += 1
                self.last_flow_error = str(e)
                self.get_logger().error(f'no flow for this frame: {e}', throttle_duration_sec=5.0)
        if flows is None:   # a chain start: the propagation node holds the labels (flow_chain_restart)
            out = empty_image(self.encoding, msg.header)
            self.counts['chain_starts'] += 1
        else:
            bwd, fwd = flows
            arr = bwd if fwd is None else np.concatenate([bwd, fwd], axis=2)
            hdr = Header(stamp=msg.header.stamp, frame_id=flow_frame_id(msg.header.frame_id, prev[0]))
            out = ndarray_to_image(np.ascontiguousarray(arr, dtype=np.float32), self.encoding, hdr)
            self.counts['flows'] += 1
        self.prev = (ns, gray, frame_id)
        self.flow_pub.publish(out)
        self.latency.add(time.perf_counter() - t0)

    def diagnostics(self):
        level, msg = diag_level('OK'), 'running'
        if self.counts['flow_errors']:
            level, msg = diag_level('WARN'), (f"{self.counts['flow_errors']} frame(s) without flow (sent as chain "
                                              f"starts: labels held); the last: {self.last_flow_error}")
        return [('', level, msg,
                 dict(self.counts, input_rate_hz=self.frames.rate(), pid=os.getpid(), **self.latency.summary()))]


def main(args=None) -> int:
    return run_node(FlowNode, args)


if __name__ == '__main__':
    sys.exit(main())
