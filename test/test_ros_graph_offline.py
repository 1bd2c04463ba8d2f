"""The ROS graph against the offline core, frame for frame, on real frames (the runner in deterministic
mode: reliable inputs, frames wait for their flow and keyframe result):

* feature caching: `vidseg_graph --temporal-mode cache1` sets the keyframe node's cache_levels, its cached
  maps reach the propagation node, and the labels match `vidseg run --temporal-mode cache1`
  (VideoSegmenter + CachedFeatureRefresher);
* two-sided labels: `vidseg_graph --two-sided` makes the propagation node publish
  /semantic/labels_two_sided (each frame once the next keyframe is in), equal to `vidseg run --two-sided`
  (TwoSidedSegmenter), while /semantic/labels stays causal; with region-ctx too (the refreshed states
  fused)."""
import json

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import image_to_ndarray, ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.testing import Probe, start_deterministic_graph, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = 'espnetv2_s0.5_512x256'
SCALE = 2
NODES = [s.name for s in graph.MANAGED_NODES]
STAMPS = [10**18 + i * 58_823_529 for i in range(16)]   # 17 Hz


def _frames(shared, seq, n):
    import cv2
    files = sorted((shared / 'data' / 'cityscapes_seq' / seq).glob('*_leftImg8bit.jpg'))[:n]
    return [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (1024, 512), interpolation=cv2.INTER_AREA) for f in files]


def _run_graph(tmp_path, frames, extra_args, record, done):
    """Start the graph, send ``frames`` one by one (each once its causal labels are out), wait for
    ``done(probe)``; returns the probe's recorded messages {topic: [(t, msg)]} of the ``record`` types."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    runner, logs_text = start_deterministic_graph(tmp_path, MODEL, SCALE, 'fixed:3', extra_args)
    probe = Probe()
    try:
        for msg_type, topic in [(Image, graph.LABELS_TOPIC)] + list(record):
            probe.record(msg_type, topic)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        assert probe.wait_for(lambda: all(probe.get_state(n, timeout=2.0) == 'active' for n in NODES), 150), \
            logs_text()
        assert probe.wait_subscribers(cam, 3)
        linked, missing = probe.wait_linked()   # a frame sent before would lose its flow / keyframe result
        assert linked, missing + '\n' + logs_text()
        for i, f in enumerate(frames):
            cam.publish(ndarray_to_image(np.ascontiguousarray(f), 'rgb8',
                                         Header(frame_id='cam', stamp=ns_to_stamp(STAMPS[i]))))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == i + 1, 60), logs_text()
        assert probe.wait_for(lambda: done(probe), 30), logs_text()
        return {k: list(v) for k, v in probe.messages.items()}
    finally:
        probe.close()
        stop_processes([runner], grace=25.0)


def _assert_equal_labels(msgs, expect, what):
    import cv2
    for i, (_, m) in enumerate(sorted(msgs, key=lambda m: stamp_to_ns(m[1].header.stamp))):
        lab = cv2.resize(image_to_ndarray(m), expect[i].shape[::-1], interpolation=cv2.INTER_NEAREST)
        assert (lab == expect[i]).mean() > 0.999, f'{what} frame {i}: {(lab == expect[i]).mean():.4f}'


def test_graph_feature_caching_matches_offline(ros_domain, shared, tmp_path):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vidseg_ros.core.caching import CachedFeatureRefresher
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    from vidseg_ros.core.temporal import attach

    frames = _frames(shared, 'seq0001', 7)
    model = load_model(MODEL)
    seg = VideoSegmenter(model, OperatingPoint('t', SCALE, 3, True, False))
    attach(seg, CachedFeatureRefresher(model, levels=1))
    expect = [seg.process(f).labels.copy() for f in frames]
    assert seg.propagator.stats['refined_frames'] == 4

    got = _run_graph(tmp_path, frames, ['--temporal-mode', 'cache1'],
                     [(Image, graph.KEYFRAME_FEATURES_TOPIC), (String, graph.STATS_TOPIC)], lambda p: True)
    _assert_equal_labels(got[graph.LABELS_TOPIC], expect, 'cache1')
    # 3 keyframes (0, 3, 6), each with its cached map; the 4 frames between refreshed with it
    assert len(got[graph.KEYFRAME_FEATURES_TOPIC]) == 3
    st = [json.loads(m.data) for _, m in got[graph.STATS_TOPIC]]
    assert st[-1]['temporal_mode'] == 'cache1' and st[-1]['refined_frames'] == 4, st[-1]


def test_graph_region_context_matches_offline(ros_domain, shared, tmp_path):
    """temporal_mode region-ctx: the keyframe node sends its context grids with each keyframe, the
    propagation node's tiles use them, and the labels equal the offline pipeline's (where the context
    changes the tile's labels). With two_sided the delayed topic fuses the refreshed states, as
    `vidseg run --two-sided --temporal-mode region-ctx` does."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vidseg_ros.core.bidirectional import TwoSidedSegmenter
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    from vidseg_ros.core.temporal import attach, make_temporal_module

    frames = _frames(shared, 'seq0000', 7)
    model = load_model(MODEL)
    expect = {}
    for mode in ('region', 'region-ctx'):
        seg = VideoSegmenter(model, OperatingPoint('t', SCALE, 3, True, False))
        attach(seg, make_temporal_module(mode, model))
        expect[mode] = [seg.process(f).labels.copy() for f in frames]
    assert seg.refiner.context_used == 4 and seg.refiner.context_missing == 0
    changed = max((a != b).mean() for a, b in zip(expect['region'], expect['region-ctx']))
    assert changed > 0.002, changed   # the context changes what the tiles say
    seg = VideoSegmenter(model, OperatingPoint('t', SCALE, 3, True, False))   # as vidseg run --two-sided does
    two = TwoSidedSegmenter(seg)
    attach(seg, make_temporal_module('region-ctx', model))
    expect_two = [o.labels.copy() for f in frames for o in two.process(f)] + [o.labels.copy() for o in two.flush()]
    assert two.buffer.stats['fused'] == 4 and seg.propagator.stats['refined_frames'] == 4
    assert max((a != b).mean() for a, b in zip(expect_two, expect['region-ctx'])) > 0.002   # fusion changes them

    # frames 0..6 final once keyframe 6 is in (no time bound: a loaded machine must not release one early)
    got = _run_graph(tmp_path, frames, ['--temporal-mode', 'region-ctx', '--two-sided', '--two-sided-max-wait', '0'],
                     [(Image, graph.KEYFRAME_FEATURES_TOPIC), (String, graph.STATS_TOPIC),
                      (Image, graph.LABELS_TWO_SIDED_TOPIC)],
                     lambda p: p.count(graph.LABELS_TWO_SIDED_TOPIC) == 7)
    _assert_equal_labels(got[graph.LABELS_TOPIC], expect['region-ctx'], 'region-ctx')
    _assert_equal_labels(got[graph.LABELS_TWO_SIDED_TOPIC], expect_two, 'region-ctx two-sided')
    # 3 keyframes (0, 3, 6), four grids each; the 4 frames between refreshed with them
    assert len(got[graph.KEYFRAME_FEATURES_TOPIC]) == 12
    st = [json.loads(m.data) for _, m in got[graph.STATS_TOPIC]]
    assert st[-1]['temporal_mode'] == 'region-ctx' and st[-1]['refined_frames'] == 4, st[-1]
    assert (st[-1]['region_context_used'], st[-1]['region_context_missing']) == (4, 0), st[-1]


def test_graph_two_sided_matches_offline(ros_domain, shared, tmp_path):
    from sensor_msgs.msg import Image
    from vidseg_ros.core.bidirectional import TwoSidedSegmenter
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint

    frames = _frames(shared, 'seq0002', 8)
    model = load_model(MODEL)
    op = OperatingPoint('t', SCALE, 3, True, False)
    causal = VideoSegmenter(model, op)
    expect_causal = [causal.process(f).labels.copy() for f in frames]
    two = TwoSidedSegmenter(VideoSegmenter(model, op))
    expect = [o.labels.copy() for f in frames for o in two.process(f)]
    expect += [o.labels.copy() for o in two.flush()]
    assert len(expect) == 8 and two.buffer.stats['fused'] == 4   # 1, 2 and 4, 5; frame 7 forward-only
    differ = np.mean([(expect[i] != expect_causal[i]).mean() for i in (1, 2, 4, 5)])   # the fused frames
    assert differ > 0.01, differ

    # frames 0..6 are final once keyframe 6 is in; frame 7 waits for a keyframe that never comes
    # no time bound (the default 1 s could release a frame early on a loaded test machine)
    got = _run_graph(tmp_path, frames, ['--two-sided', '--two-sided-max-wait', '0'], [(Image, graph.LABELS_TWO_SIDED_TOPIC)],
                     lambda p: p.count(graph.LABELS_TWO_SIDED_TOPIC) == 7)
    two_msgs = got[graph.LABELS_TWO_SIDED_TOPIC]
    assert [stamp_to_ns(m.header.stamp) for _, m in two_msgs] == STAMPS[:7]   # in order, camera stamps
    assert all(m.header.frame_id == 'cam' and m.encoding == 'mono8' for _, m in two_msgs)
    _assert_equal_labels(two_msgs, expect, 'two-sided')
    _assert_equal_labels(got[graph.LABELS_TOPIC], expect_causal, 'causal')   # the causal topic is unchanged
