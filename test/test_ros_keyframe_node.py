"""keyframe_node in its own process: bounded work under a burst (frames skipped while the network runs,
one decision per frame), message formats, run-time schedule switching with validation."""
import json
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import image_to_ndarray, ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.testing import Probe, read_log, start_node, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.timeout(150)]


def test_keyframe_node_burst_and_schedule_switch(ros_domain, shared, tmp_path):
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.ros.common import latched_qos

    proc = start_node('keyframe_node', {'model': 'espnetv2_s0.5_512x256', 'backend': 'torch', 'num_threads': 1,
                                        'schedule': 'fixed:1', 'input_qos': 'reliable', 'queue_depth': 50,
                                        'scale': 2}, log_dir=str(tmp_path))
    probe = Probe()
    try:
        probe.record(Image, graph.KEYFRAME_LABELS_TOPIC)
        probe.record(Image, graph.KEYFRAME_PROBS_TOPIC)
        probe.record(String, graph.KEYFRAME_DECISION_TOPIC)
        probe.record(String, graph.KEYFRAME_INFO_TOPIC, qos=latched_qos())
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        assert probe.transition('keyframe_node', Transition.TRANSITION_CONFIGURE, 90), read_log(proc)
        assert probe.transition('keyframe_node', Transition.TRANSITION_ACTIVATE)
        assert probe.wait_subscribers(cam)
        rng = np.random.default_rng(0)
        img = (rng.random((256, 512, 3)) * 255).astype(np.uint8)
        n = 12
        stamps = [7 * 10**9 + i * 20_000_000 for i in range(n)]
        for ns in stamps:  # a 50 Hz burst: far faster than the network
            cam.publish(ndarray_to_image(img, 'rgb8', Header(frame_id='cam', stamp=ns_to_stamp(ns))))
            time.sleep(0.02)
        assert probe.wait_for(lambda: probe.count(graph.KEYFRAME_DECISION_TOPIC) == n, 60), read_log(proc)
        time.sleep(0.5)
        dec = [json.loads(m.data) for _, m in probe.messages[graph.KEYFRAME_DECISION_TOPIC]]
        assert sorted(d['stamp_ns'] for d in dec) == stamps  # exactly one decision per frame
        kf = [d['stamp_ns'] for d in dec if d['keyframe']]
        busy = [d for d in dec if d['reason'] == 'busy']
        assert busy and len(kf) + len(busy) == n and len(kf) < n
        assert stamps[0] in kf and all(not d['keyframe'] for d in busy)
        assert probe.wait_for(lambda: probe.count(graph.KEYFRAME_LABELS_TOPIC) == len(kf), 30)
        labels = [m for _, m in probe.messages[graph.KEYFRAME_LABELS_TOPIC]]
        probs = [m for _, m in probe.messages[graph.KEYFRAME_PROBS_TOPIC]]
        assert [stamp_to_ns(m.header.stamp) for m in labels] == kf
        assert (labels[0].width, labels[0].height, labels[0].encoding) == (256, 128, 'mono8')  # working res D=2
        assert (probs[0].width, probs[0].height, probs[0].encoding) == (64, 32, '8UC(20)')     # 1/4 of it
        p = image_to_ndarray(probs[0]).astype(int).sum(axis=2)
        assert np.all(np.abs(p - 255) <= 20)  # quantised softmax planes sum to ~255
        info = json.loads(probe.messages[graph.KEYFRAME_INFO_TOPIC][-1][1].data)
        assert info['class_map'] == list(range(19)) + [255] and info['num_outputs'] == 20

        ok, reason = probe.set_param('keyframe_node', 'schedule', 'sometimes')
        assert not ok and 'unknown schedule type' in reason
        assert probe.set_param('keyframe_node', 'schedule', 'fixed:100')[0]
        before = probe.count(graph.KEYFRAME_LABELS_TOPIC)
        for i in range(4):  # paced: no keyframe under fixed:100 (history kept across the switch)
            cam.publish(ndarray_to_image(img, 'rgb8', Header(frame_id='cam', stamp=ns_to_stamp(9 * 10**9 + i))))
            assert probe.wait_for(lambda: probe.count(graph.KEYFRAME_DECISION_TOPIC) == n + i + 1, 20)
        assert probe.count(graph.KEYFRAME_LABELS_TOPIC) == before
        assert probe.transition('keyframe_node', Transition.TRANSITION_DEACTIVATE)
        assert probe.transition('keyframe_node', Transition.TRANSITION_CLEANUP)
    finally:
        probe.close()
        stop_processes([proc])
