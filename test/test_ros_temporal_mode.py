"""propagation_node parameter `temporal_mode`: the issue-4 modules are selectable in the ROS graph."""
import json

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import empty_image, image_to_ndarray, ndarray_to_image, ns_to_stamp  # noqa: E402
from vidseg_ros.ros.testing import Probe, read_log, start_node, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(150)]

W, H = 128, 64


@pytest.mark.parametrize('mode', ['grfp', 'refiner', 'region'])
def test_learned_temporal_mode_in_the_propagation_node(ros_domain, shared, tmp_path, mode):
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.core.classes import CITYSCAPES
    from vidseg_ros.ros.common import latched_qos

    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 19, (4, 8)), 16, 0), 16, 1).astype(np.uint8)
    p = rng.random((20, H // 4, W // 4)).astype(np.float32)
    probs = np.clip(np.rint(p / p.sum(0) * 255), 0, 255).astype(np.uint8)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    proc = start_node('propagation_node', {'input_qos': 'reliable', 'flow_timeout': 5.0, 'keyframe_wait': 5.0,
                                           'temporal_mode': mode, 'model': 'espnetv2_s0.5_512x256',
                                           **({'region_tile_area': 0.3} if mode == 'region' else {})},
                      log_dir=str(tmp_path))
    probe = Probe()
    try:
        probe.record(Image, graph.LABELS_TOPIC)
        probe.record(String, graph.STATS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        flow_pub = probe.publisher(Image, graph.FLOW_TOPIC)
        kf_labels = probe.publisher(Image, graph.KEYFRAME_LABELS_TOPIC)
        kf_probs = probe.publisher(Image, graph.KEYFRAME_PROBS_TOPIC)
        decision = probe.publisher(String, graph.KEYFRAME_DECISION_TOPIC)
        info = probe.publisher(String, graph.KEYFRAME_INFO_TOPIC, latched_qos())
        info.publish(String(data=json.dumps({'class_set': CITYSCAPES.to_dict(),
                                             'class_map': list(range(19)) + [255]})))
        assert probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE, timeout=90), read_log(proc)
        assert probe.transition('propagation_node', Transition.TRANSITION_ACTIVATE)
        for pub in (cam, flow_pub, kf_labels, kf_probs):
            assert probe.wait_subscribers(pub)
        for i in range(4):
            h = Header(frame_id='cam', stamp=ns_to_stamp(10**9 + i * 10**8))
            decision.publish(String(data=json.dumps({'stamp_ns': 10**9 + i * 10**8, 'keyframe': i == 0})))
            if i == 0:
                kf_probs.publish(ndarray_to_image(np.ascontiguousarray(probs.transpose(1, 2, 0)), '8UC(20)', h))
                kf_labels.publish(ndarray_to_image(labels, 'mono8', h))
            cam.publish(ndarray_to_image(img, 'rgb8', h))
            f = np.zeros((H // 2, W // 2, 4), np.float32)
            f[..., 0], f[..., 2] = 1.0, -1.0
            flow_pub.publish(empty_image('32FC4', h) if i == 0 else ndarray_to_image(f, '32FC4', h))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == i + 1, 30), read_log(proc)
        out = [image_to_ndarray(m) for _, m in probe.messages[graph.LABELS_TOPIC]]
        assert all(o.shape == (H, W) for o in out)
        assert (out[3] < 19).mean() > 0.8          # propagated, not void
        assert probe.wait_for(lambda: probe.count(graph.STATS_TOPIC) == 4, 10)
        st = [json.loads(m.data) for _, m in probe.messages[graph.STATS_TOPIC]]
        assert st[-1]['temporal_mode'] == mode
        assert st[-1]['refined_frames'] == 3       # the learned module ran on every propagated frame
    finally:
        probe.close()
        stop_processes([proc])


def test_caching_mode_is_rejected_with_the_reason(ros_domain, tmp_path):
    from lifecycle_msgs.msg import Transition
    proc = start_node('propagation_node', {'temporal_mode': 'cache1'}, log_dir=str(tmp_path))
    probe = Probe()
    try:
        assert not probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE, timeout=60)
        assert probe.wait_for(lambda: 'cache1' in read_log(proc) and 'not available' in read_log(proc), 10), \
            read_log(proc)
    finally:
        probe.close()
        stop_processes([proc])
