"""propagation_node alone (the probe plays flow_node and keyframe_node): live-mode join semantics.

Frames never wait for keyframes; a late keyframe is re-propagated to the newest frame (result equal to
the core Propagator fed the same data); a frame whose flow does not come is output after flow_timeout
(degraded, counted); late flows and out-of-order images are counted; one labels message per image."""
import json
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import (empty_image, image_to_ndarray, ndarray_to_image, ns_to_stamp,  # noqa: E402
                                        stamp_to_ns)
from vidseg_ros.ros.testing import Probe, read_log, start_node, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

W, H = 64, 48


def _data():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.repeat(rng.integers(0, 19, (6, 8)), 8, 0), 8, 1).astype(np.uint8)
    p = rng.random((20, 12, 16)).astype(np.float32)
    probs = np.clip(np.rint(p / p.sum(0) * 255), 0, 255).astype(np.uint8)
    flows = []
    for i in range(6):
        f = np.zeros((H // 2, W // 2, 4), np.float32)
        f[..., 0] = 0.5 + 0.1 * i   # backward dx (half-resolution pixels)
        f[..., 2] = -(0.5 + 0.1 * i)
        flows.append(f)
    return labels, probs, flows


def test_propagation_node_live_join(ros_domain, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.core.classes import CITYSCAPES
    from vidseg_ros.core.propagation import Propagator, Semantics
    from vidseg_ros.ros.common import latched_qos

    labels, probs, flows = _data()
    class_map = list(range(19)) + [255]
    proc = start_node('propagation_node', {'input_qos': 'reliable', 'flow_timeout': 0.4, 'keyframe_wait': 0.0,
                                           'diagnostics_period': 0.2}, log_dir=str(tmp_path))
    probe = Probe()
    try:
        for t in (graph.LABELS_TOPIC, graph.LABELS_COLOR_TOPIC, graph.CONFIDENCE_TOPIC):
            probe.record(Image, t)
        probe.record(String, graph.CLASSES_TOPIC, qos=latched_qos())
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        flow_pub = probe.publisher(Image, graph.FLOW_TOPIC)
        kf_labels = probe.publisher(Image, graph.KEYFRAME_LABELS_TOPIC)
        kf_probs = probe.publisher(Image, graph.KEYFRAME_PROBS_TOPIC)
        info = probe.publisher(String, graph.KEYFRAME_INFO_TOPIC, latched_qos())
        info.publish(String(data=json.dumps({'class_set': CITYSCAPES.to_dict(), 'class_map': class_map})))
        assert probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE), read_log(proc)
        assert probe.transition('propagation_node', Transition.TRANSITION_ACTIVATE)
        for p in (cam, flow_pub, kf_labels, kf_probs):
            assert probe.wait_subscribers(p)
        hdrs = [Header(frame_id='cam', stamp=ns_to_stamp(5 * 10**9 + i * 10**8)) for i in range(6)]
        img = np.zeros((H, W, 3), np.uint8)
        n = [0]

        def frame(i, with_flow=True, expect_wait=None):
            t0 = time.monotonic()
            cam.publish(ndarray_to_image(img, 'rgb8', hdrs[i]))
            if with_flow:
                flow_pub.publish(empty_image('32FC4', hdrs[i]) if i == 0 else
                                 ndarray_to_image(flows[i], '32FC4', hdrs[i]))
            n[0] += 1
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == n[0], 10), read_log(proc)
            return time.monotonic() - t0

        # frames 0-2: no keyframe yet -> void labels right away (no waiting)
        for i in range(3):
            assert frame(i) < 0.35
        # keyframe result for frame 0 arrives late; frame 3 gets the re-propagated semantics
        kf_probs.publish(ndarray_to_image(np.ascontiguousarray(probs.transpose(1, 2, 0)), '8UC(20)', hdrs[0]))
        kf_labels.publish(ndarray_to_image(labels, 'mono8', hdrs[0]))
        time.sleep(0.3)
        frame(3)
        # frame 4: its flow never comes in time -> output after flow_timeout, labels held
        dt = frame(4, with_flow=False)
        assert dt >= 0.35
        # too late for frame 4's labels (counted); the state still takes it (frame 5 is not held)
        flow_pub.publish(ndarray_to_image(flows[4], '32FC4', hdrs[4]))
        frame(5)
        # an image older than the newest processed frame still gets exactly one (degraded) output
        cam.publish(ndarray_to_image(img, 'rgb8', hdrs[2]))
        assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == 7, 10)

        got = [m for _, m in probe.messages[graph.LABELS_TOPIC]]
        order = [0, 1, 2, 3, 4, 5, 2]
        for m, i in zip(got, order):
            assert m.header.frame_id == 'cam' and stamp_to_ns(m.header.stamp) == stamp_to_ns(hdrs[i].stamp)
            assert (m.width, m.height) == (W, H)
        ref = Propagator()
        sem = Semantics(labels, probs, np.asarray(class_map, np.uint8))
        expect = [ref.step(0).labels.copy()]
        for i in (1, 2):
            expect.append(ref.step(i, flows[i][..., :2], flows[i][..., 2:]).labels.copy())
        assert ref.set_keyframe(0, sem) == 'late'
        expect.append(ref.step(3, flows[3][..., :2], flows[3][..., 2:]).labels.copy())
        expect.append(ref.step(4).labels.copy())
        assert ref.amend_flow(4, flows[4][..., :2], flows[4][..., 2:])
        expect.append(ref.step(5, flows[5][..., :2], flows[5][..., 2:]).labels.copy())
        import cv2
        for k in range(6):
            exp = cv2.resize(expect[k], (W, H), interpolation=cv2.INTER_NEAREST)  # node outputs input size
            np.testing.assert_array_equal(image_to_ndarray(got[k]), exp, err_msg=f'frame {k}')
        assert (image_to_ndarray(got[2]) == 255).all() and (image_to_ndarray(got[3]) < 19).mean() > 0.9
        assert not np.array_equal(image_to_ndarray(got[3]), labels)  # it was warped, not copied
        colors = [m for _, m in probe.messages[graph.LABELS_COLOR_TOPIC]]
        assert colors[3].encoding == 'rgb8'
        np.testing.assert_array_equal(image_to_ndarray(colors[3])[0, 0], CITYSCAPES.palette[expect[3][0, 0]])
        classes = json.loads(probe.messages[graph.CLASSES_TOPIC][-1][1].data)
        assert classes['names'] == list(CITYSCAPES.names)

        def counts():
            for _, arr in reversed(probe.messages[graph.DIAGNOSTICS_TOPIC]):
                for s in arr.status:
                    if s.name == 'vidseg: propagation_node':
                        return dict({kv.key: kv.value for kv in s.values}, _message=s.message)
            return {}
        assert probe.wait_for(lambda: counts().get('frames_out') == '7', 5), counts()
        c = counts()
        assert c['flow_timeouts'] == '1' and c['late_flows'] == '1' and c['out_of_order'] == '1'
        assert c['late_flows_applied'] == '1'
        assert c['flows_in'] == '6'   # every flow message published above, the late one included
        assert '1 frame(s) waited out flow_timeout; 6 flow message(s) received' in c['_message']
        assert c['keyframes_late'] == '1' and int(c['degraded']) >= 4
        assert probe.transition('propagation_node', Transition.TRANSITION_DEACTIVATE)
        assert probe.transition('propagation_node', Transition.TRANSITION_CLEANUP)
    finally:
        probe.close()
        stop_processes([proc])


DEPTH_OVERRIDE = 'qos_overrides./semantic/labels.publisher.depth'
COLOR_OVERRIDE = 'qos_overrides./semantic/labels_color.publisher.reliability'


def test_a_bad_qos_override_fails_the_configure_naming_the_topic(ros_domain, tmp_path):
    from lifecycle_msgs.msg import Transition
    proc = start_node('propagation_node', {'qos_overrides./semantic/status.publisher.reliability': 'sometimes'},
                      log_dir=str(tmp_path))
    probe = Probe()
    try:
        assert not probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE)
        assert probe.wait_for(lambda: 'configure failed: QoS override for /semantic/status:' in read_log(proc), 5)
        assert 'sometimes' in read_log(proc)
    finally:
        probe.close()
        stop_processes([proc])


def test_parameters_set_at_run_time_apply_or_are_refused(ros_domain, tmp_path):
    """``ros2 param set`` on a running node: the join's bounds (LIVE_PARAMS) apply at once; a parameter read
    on configure is refused with the reason instead of being stored and silently ignored until the next
    configure; unconfigured, anything goes and configure reads it. The manager likewise applies its
    timeouts and refuses its fixed parameters."""
    from lifecycle_msgs.msg import Transition
    from rclpy.qos import ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    proc = start_node('propagation_node', {'input_qos': 'reliable', 'flow_timeout': 20.0, 'keyframe_wait': 0.0,
                                           'source_timeout': 30.0, DEPTH_OVERRIDE: 30, COLOR_OVERRIDE: 'best_effort'},
                      log_dir=str(tmp_path))
    mgr = start_node('lifecycle_manager', {'autostart': False, 'node_names': ['propagation_node']},
                     log_dir=str(tmp_path))
    probe = Probe()
    try:
        probe.record(Image, graph.LABELS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        flow_pub = probe.publisher(Image, graph.FLOW_TOPIC)
        assert probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE), read_log(proc)
        assert probe.transition('propagation_node', Transition.TRANSITION_ACTIVATE)
        assert probe.wait_subscribers(cam) and probe.wait_subscribers(flow_pub)
        img = np.zeros((H, W, 3), np.uint8)
        hdrs = [Header(frame_id='cam', stamp=ns_to_stamp(5 * 10**9 + i * 10**8)) for i in range(3)]
        cam.publish(ndarray_to_image(img, 'rgb8', hdrs[0]))
        flow_pub.publish(empty_image('32FC4', hdrs[0]))
        assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == 1, 10), read_log(proc)
        # ROS 2's standard QoS overrides of the outputs, given at start-up: applied, logged, read-only after
        color = probe.node.get_publishers_info_by_topic(graph.LABELS_COLOR_TOPIC)
        assert [i.qos_profile.reliability for i in color] == [ReliabilityPolicy.BEST_EFFORT], color
        assert [i.qos_profile.reliability for i in probe.node.get_publishers_info_by_topic(graph.LABELS_TOPIC)] \
            == [ReliabilityPolicy.RELIABLE]
        assert '/semantic/labels: QoS overridden to reliable, keep_last 30' in read_log(proc)
        assert '/semantic/labels_color: QoS overridden to best_effort, keep_last 10' in read_log(proc)
        assert probe.get_param('propagation_node', DEPTH_OVERRIDE) == 30
        ok, reason = probe.set_param('propagation_node', DEPTH_OVERRIDE, 5)
        assert not ok and 'read-only' in reason, reason
        # a live bound: frame 1's flow never comes; with the configured 20 s it would wait 20 s (the
        # source_timeout, which would end the wait at 3 s by default, is 30 s here)
        assert probe.set_param('propagation_node', 'flow_timeout', 0.3) == (True, '')
        assert probe.set_param('propagation_node', 'keyframe_wait', 0.05)[0]   # restarts the join's timer
        t0 = time.monotonic()
        cam.publish(ndarray_to_image(img, 'rgb8', hdrs[1]))
        assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == 2, 8), read_log(proc)
        assert 0.25 <= time.monotonic() - t0 < 8
        assert 'parameter flow_timeout -> 0.3 (applied)' in read_log(proc)
        # read on configure: refused while configured, with the reason and what does apply
        ok, reason = probe.set_param('propagation_node', 'scale', 2)
        assert not ok and 'scale: read once, so a change now would be ignored' in reason, reason
        assert 'deactivate, cleanup, set, configure, activate' in reason and 'keyframe_wait' in reason
        assert probe.get_param('propagation_node', 'scale') == 1
        # a live parameter out of its range: refused by its descriptor
        assert not probe.set_param('propagation_node', 'flow_timeout', 100.0)[0]
        assert probe.get_param('propagation_node', 'flow_timeout') == 0.3
        # rclpy's own parameters are not ours to refuse
        assert probe.set_param('propagation_node', 'use_sim_time', False)[0]
        # the node still works on both changes: frame 2 with its flow goes out
        cam.publish(ndarray_to_image(img, 'rgb8', hdrs[2]))
        flow_pub.publish(empty_image('32FC4', hdrs[2]))
        assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == 3, 10), read_log(proc)
        # unconfigured: accepted, and the next configure reads it
        assert probe.transition('propagation_node', Transition.TRANSITION_DEACTIVATE)
        assert not probe.set_param('propagation_node', 'scale', 2)[0]      # inactive is still configured
        assert probe.transition('propagation_node', Transition.TRANSITION_CLEANUP)
        assert probe.set_param('propagation_node', 'scale', 2) == (True, '')
        assert probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE), read_log(proc)
        assert probe.get_param('propagation_node', 'scale') == 2
        assert read_log(proc).count('/semantic/labels: QoS overridden to reliable, keep_last 30') == 2
        # the manager: timeouts apply, the node list and the timer period are fixed at start
        assert probe.set_param('lifecycle_manager', 'restart_after', 20.0) == (True, '')
        assert 'parameter restart_after -> 20.0 (applied)' in read_log(mgr)
        ok, reason = probe.set_param('lifecycle_manager', 'health_period', 0.5)
        assert not ok and 'health_period: read once' in reason and 'give it at start-up' in reason, reason
        ok, reason = probe.set_param('lifecycle_manager', 'schedule', 'fixed:0')
        assert not ok and 'interval must be in' in reason, reason
    finally:
        probe.close()
        stop_processes([proc, mgr])
