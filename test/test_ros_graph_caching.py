"""Feature caching through the whole graph: `vidseg_graph --temporal-mode cache1` sets the keyframe node's
cache_levels, its cached maps reach the propagation node, and the labels match the offline
`vidseg run --temporal-mode cache1` path (VideoSegmenter + CachedFeatureRefresher) on real frames."""
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import image_to_ndarray, ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.testing import Probe, start_process, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = 'espnetv2_s0.5_512x256'
SCALE = 2
NODES = [s.name for s in graph.MANAGED_NODES]


def test_graph_feature_caching_matches_offline(ros_domain, shared, tmp_path):
    import cv2
    import json
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.core.caching import CachedFeatureRefresher
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    from vidseg_ros.core.temporal import attach

    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0001').glob('*_leftImg8bit.jpg'))[:7]
    frames = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (1024, 512), interpolation=cv2.INTER_AREA)
              for f in files]
    model = load_model(MODEL)
    seg = VideoSegmenter(model, OperatingPoint('t', SCALE, 3, True, False))
    attach(seg, CachedFeatureRefresher(model, levels=1))
    expect = [seg.process(f).labels.copy() for f in frames]
    assert seg.propagator.stats['refined_frames'] == 4

    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', MODEL, '--schedule', 'fixed:3',
           '--temporal-mode', 'cache1', '--log-dir', str(tmp_path / 'logs'), '--stop-timeout', '20',
           '--param', 'keyframe_node:num_threads=1',
           '--param', 'propagation_node:keyframe_wait=30.0', '--param', 'propagation_node:flow_timeout=30.0']
    for n in NODES:
        cmd += ['--param', f'{n}:input_qos=reliable', '--param', f'{n}:scale={SCALE}']
    runner = start_process(cmd, str(tmp_path / 'runner.log'))
    probe = Probe()

    def logs_text():
        out = [(tmp_path / 'runner.log').read_text(errors='replace')]
        for f in sorted((tmp_path / 'logs').glob('*.log')) if (tmp_path / 'logs').is_dir() else []:
            out.append(f'--- {f.name}\n' + f.read_text(errors='replace')[-3000:])
        return '\n'.join(out)

    try:
        probe.record(Image, graph.LABELS_TOPIC)
        probe.record(Image, graph.KEYFRAME_FEATURES_TOPIC)
        probe.record(String, graph.STATS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        assert probe.wait_for(lambda: all(probe.get_state(n, timeout=2.0) == 'active' for n in NODES), 150), \
            logs_text()
        assert probe.wait_subscribers(cam, 3)
        for i, f in enumerate(frames):
            cam.publish(ndarray_to_image(np.ascontiguousarray(f), 'rgb8',
                                         Header(frame_id='cam', stamp=ns_to_stamp(10**18 + i * 58_823_529))))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == i + 1, 60), logs_text()
        got = sorted(probe.messages[graph.LABELS_TOPIC], key=lambda m: stamp_to_ns(m[1].header.stamp))
        for i, (_, m) in enumerate(got):
            lab = cv2.resize(image_to_ndarray(m), expect[i].shape[::-1], interpolation=cv2.INTER_NEAREST)
            assert (lab == expect[i]).mean() > 0.999, f'frame {i}: {(lab == expect[i]).mean():.4f}'
        # 3 keyframes (0, 3, 6), each with its cached map; the 4 frames between refreshed with it
        assert probe.count(graph.KEYFRAME_FEATURES_TOPIC) == 3
        st = [json.loads(m.data) for _, m in probe.messages[graph.STATS_TOPIC]]
        assert st[-1]['temporal_mode'] == 'cache1' and st[-1]['refined_frames'] == 4, st[-1]
    finally:
        probe.close()
        stop_processes([runner], grace=25.0)
