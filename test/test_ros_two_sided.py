"""Two-sided propagation in the ROS graph: `vidseg_graph --two-sided` makes the propagation node publish
/semantic/labels_two_sided (each frame once the next keyframe is in), equal to the offline
`vidseg run --two-sided` path (TwoSidedSegmenter) on real frames, while /semantic/labels stays causal."""
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


def test_graph_two_sided_matches_offline(ros_domain, shared, tmp_path):
    import cv2
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vidseg_ros.core.bidirectional import TwoSidedSegmenter
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint

    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0002').glob('*_leftImg8bit.jpg'))[:8]
    frames = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (1024, 512), interpolation=cv2.INTER_AREA)
              for f in files]
    model = load_model(MODEL)
    op = OperatingPoint('t', SCALE, 3, True, False)
    causal = [VideoSegmenter(model, op)]
    expect_causal = [causal[0].process(f).labels.copy() for f in frames]
    two = TwoSidedSegmenter(VideoSegmenter(model, op))
    expect = [o.labels.copy() for f in frames for o in two.process(f)]
    expect += [o.labels.copy() for o in two.flush()]
    assert len(expect) == 8 and two.buffer.stats['fused'] == 4   # 1, 2 and 4, 5; frame 7 forward-only
    differ = np.mean([(expect[i] != expect_causal[i]).mean() for i in (1, 2, 4, 5)])   # the fused frames
    assert differ > 0.01, differ

    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', MODEL, '--schedule', 'fixed:3',
           '--two-sided', '--log-dir', str(tmp_path / 'logs'), '--stop-timeout', '20',
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
        probe.record(Image, graph.LABELS_TWO_SIDED_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        assert probe.wait_for(lambda: all(probe.get_state(n, timeout=2.0) == 'active' for n in NODES), 150), \
            logs_text()
        assert probe.wait_subscribers(cam, 3)
        stamps = [10**18 + i * 58_823_529 for i in range(len(frames))]
        for i, f in enumerate(frames):
            cam.publish(ndarray_to_image(np.ascontiguousarray(f), 'rgb8',
                                         Header(frame_id='cam', stamp=ns_to_stamp(stamps[i]))))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == i + 1, 60), logs_text()
        # frames 0..6 are final once keyframe 6 is in; frame 7 waits for a keyframe that never comes
        assert probe.wait_for(lambda: probe.count(graph.LABELS_TWO_SIDED_TOPIC) == 7, 30), logs_text()
        got = [m for _, m in probe.messages[graph.LABELS_TWO_SIDED_TOPIC]]
        assert [stamp_to_ns(m.header.stamp) for m in got] == stamps[:7]      # in order, camera stamps
        assert all(m.header.frame_id == 'cam' and m.encoding == 'mono8' for m in got)
        for i, m in enumerate(got):
            lab = cv2.resize(image_to_ndarray(m), expect[i].shape[::-1], interpolation=cv2.INTER_NEAREST)
            assert (lab == expect[i]).mean() > 0.999, f'frame {i}: {(lab == expect[i]).mean():.4f}'
        causal_got = sorted(probe.messages[graph.LABELS_TOPIC], key=lambda m: stamp_to_ns(m[1].header.stamp))
        for i, (_, m) in enumerate(causal_got):   # the causal topic is unchanged
            lab = cv2.resize(image_to_ndarray(m), expect_causal[i].shape[::-1], interpolation=cv2.INTER_NEAREST)
            assert (lab == expect_causal[i]).mean() > 0.999, f'causal frame {i}'
    finally:
        probe.close()
        stop_processes([runner], grace=25.0)
