"""flow_node in its own process: lifecycle, parameter validation, flow equal to the core's."""
import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import image_to_ndarray, ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.testing import Probe, read_log, start_node, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]


def _frames(n=4, w=160, h=96, seed=0):
    rng = np.random.default_rng(seed)
    base = (rng.random((h + 20, w + 40, 3)) * 255).astype(np.uint8)
    base = np.ascontiguousarray(np.repeat(np.repeat(base[::4, ::4], 4, 0), 4, 1)[:h + 20, :w + 40])
    return [np.ascontiguousarray(base[5:5 + h, 2 * i:2 * i + w]) for i in range(n)]


def test_flow_node_lifecycle_and_output(ros_domain, tmp_path):
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.ros.flow_node import make_flow_fn, parse_flow_frame_id, working_gray

    proc = start_node('flow_node', {'scale': 0, 'preset': 'ultrafast', 'method': 'nope',
                                    'input_qos': 'reliable'}, log_dir=str(tmp_path))
    probe = Probe()
    try:
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        # a bad parameter value fails configure with the reason logged; fixing it lets configure pass
        # out-of-range start-up value (scale:=0): the node stays up, configure fails naming it
        assert not probe.transition('flow_node', Transition.TRANSITION_CONFIGURE)
        assert probe.get_state('flow_node') == 'unconfigured'
        assert probe.set_param('flow_node', 'scale', 2)[0]
        assert not probe.transition('flow_node', Transition.TRANSITION_CONFIGURE)
        assert probe.set_param('flow_node', 'method', 'dis')[0]
        assert probe.transition('flow_node', Transition.TRANSITION_CONFIGURE)
        assert probe.transition('flow_node', Transition.TRANSITION_ACTIVATE)
        # /diagnostics names the internal topic nobody takes yet; a subscriber links it
        linked, missing = probe.wait_linked(timeout=4.0, nodes=['flow_node'])
        assert not linked and missing == 'flow_node: pub:/vidseg/flow', missing
        probe.record(Image, graph.FLOW_TOPIC)
        linked, missing = probe.wait_linked(timeout=20.0, nodes=['flow_node'])
        assert linked, missing
        assert probe.wait_subscribers(cam)
        frames = _frames()
        for i, f in enumerate(frames):
            hdr = Header(frame_id='cam_left', stamp=ns_to_stamp(10**9 + i * 50_000_000))
            cam.publish(ndarray_to_image(f[:, :, ::-1].copy(), 'bgr8', hdr))  # bgr8 input
            assert probe.wait_for(lambda: probe.count(graph.FLOW_TOPIC) == i + 1, 10), read_log(proc)
        msgs = [m for _, m in probe.messages[graph.FLOW_TOPIC]]
        assert [stamp_to_ns(m.header.stamp) for m in msgs] == [10**9 + i * 50_000_000 for i in range(4)]
        # frame_id = the camera's + the stamp of the frame the flow starts from (none on a chain start)
        assert [parse_flow_frame_id(m.header.frame_id) for m in msgs] == \
            [('cam_left', None)] + [('cam_left', 10**9 + i * 50_000_000) for i in range(3)]
        assert msgs[0].height == 0 and msgs[0].width == 0  # chain start: no predecessor
        est = FlowEstimator('dis', 'ultrafast')   # what VideoSegmenter computes (native flows, both ways)
        for i in range(1, 4):
            arr = image_to_ndarray(msgs[i])
            assert msgs[i].encoding == '32FC4'
            prev, cur = working_gray(frames[i - 1], 2), working_gray(frames[i], 2)
            bwd, fwd = est.compute_native(cur, prev), est.compute_native(prev, cur)
            assert [a.tolist() for a in make_flow_fn('dis', 'ultrafast', True)(prev, cur)] == \
                [bwd.tolist(), fwd.tolist()]
            assert arr.shape[:2] == bwd.shape[:2] and arr.shape[1] < 80  # native (coarse) resolution
            np.testing.assert_array_equal(arr[..., :2], bwd)
            np.testing.assert_array_equal(arr[..., 2:], fwd)
            # content moves left by 2 px per frame: +2 px backward, -2 px forward (in native pixels)
            expect = 2.0 * arr.shape[1] / 160
            assert abs(np.median(arr[..., 0]) - expect) < 0.5 * expect
            assert abs(np.median(arr[..., 2]) + expect) < 0.5 * expect
        assert probe.transition('flow_node', Transition.TRANSITION_DEACTIVATE)
        assert probe.transition('flow_node', Transition.TRANSITION_CLEANUP)
        assert probe.get_state('flow_node') == 'unconfigured'
        log = read_log(proc)
        assert 'configure failed: parameter scale must be in [1, 16], got 0' in log
        assert "configure failed: method must be 'dis' or 'farneback', got 'nope'" in log
    finally:
        probe.close()
        stop_processes([proc])
    assert proc.returncode is not None
