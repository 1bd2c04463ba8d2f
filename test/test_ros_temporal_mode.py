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


def _propagation_node(tmp_path, params, class_map, info_extra=None, features=False):
    """A propagation node (reliable input, long waits) and a probe that records its labels and stats and
    publishes its inputs: (proc, probe, publishers by name). The keyframe info is published (latched)."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vidseg_ros.core.classes import CITYSCAPES
    from vidseg_ros.ros.common import latched_qos
    proc = start_node('propagation_node', {'input_qos': 'reliable', 'flow_timeout': 5.0, 'keyframe_wait': 5.0,
                                           'refine_max_lag': 0.0, 'model': 'espnetv2_s0.5_512x256', **params},
                      log_dir=str(tmp_path))
    try:
        probe = Probe()
    except Exception:
        stop_processes([proc])
        raise
    probe.record(Image, graph.LABELS_TOPIC)
    probe.record(String, graph.STATS_TOPIC)
    topics = {'cam': graph.CAMERA_TOPIC, 'flow': graph.FLOW_TOPIC, 'kf_labels': graph.KEYFRAME_LABELS_TOPIC,
              'kf_probs': graph.KEYFRAME_PROBS_TOPIC}
    if features:
        topics['kf_feats'] = graph.KEYFRAME_FEATURES_TOPIC
    pubs = {k: probe.publisher(Image, t) for k, t in topics.items()}
    pubs['decision'] = probe.publisher(String, graph.KEYFRAME_DECISION_TOPIC)
    pubs['info'] = probe.publisher(String, graph.KEYFRAME_INFO_TOPIC, latched_qos())
    pubs['info'].publish(String(data=json.dumps({'class_set': CITYSCAPES.to_dict(), 'class_map': class_map,
                                                 **(info_extra or {})})))
    return proc, probe, pubs


@pytest.mark.parametrize('mode', ['grfp', 'refiner', 'region'])
def test_learned_temporal_mode_in_the_propagation_node(ros_domain, shared, tmp_path, mode):
    from lifecycle_msgs.msg import Transition
    from std_msgs.msg import Header, String

    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 19, (4, 8)), 16, 0), 16, 1).astype(np.uint8)
    p = rng.random((20, H // 4, W // 4)).astype(np.float32)
    probs = np.clip(np.rint(p / p.sum(0) * 255), 0, 255).astype(np.uint8)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    proc, probe, pubs = _propagation_node(tmp_path, {'temporal_mode': mode, **({'region_tile_area': 0.3}
                                                                                if mode == 'region' else {})},
                                          list(range(19)) + [255])
    try:
        cam, flow_pub, kf_labels, kf_probs, decision = (pubs[k] for k in ('cam', 'flow', 'kf_labels', 'kf_probs',
                                                                          'decision'))
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


@pytest.mark.parametrize('with_maps', [True, False])
def test_feature_caching_in_the_propagation_node(ros_domain, shared, tmp_path, with_maps):
    """temporal_mode cache1: the keyframe's cached maps come on /vidseg/keyframe/features (as the keyframe
    node sends them); every propagated frame is the network's low-level part on that frame + the warped
    maps: the node's labels equal the core's TemporalPropagator with a CachedFeatureRefresher, exactly.
    Without maps (a keyframe node without cache_levels) the keyframe is not held back: the frames keep
    the plain warp and /diagnostics says why."""
    import cv2
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from std_msgs.msg import Header, String
    from vidseg_ros.core.caching import CachedFeatureRefresher
    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.temporal import TemporalPropagator
    from vidseg_ros.ros.keyframe_node import features_to_msgs, semantics_to_msgs

    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0003').glob('*_leftImg8bit.*'))[:4]
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (W, H), interpolation=cv2.INTER_AREA)
            for f in files]
    model = load_model('espnetv2_s0.5_512x256')
    ref = CachedFeatureRefresher(model, levels=1)
    kf, _ = ref.keyframe_semantics(imgs[0], (W, H))
    est = FlowEstimator('dis', preset='ultrafast')
    flows = [None] + [est.forward_backward(imgs[i - 1], imgs[i]) for i in range(1, 4)]
    core = TemporalPropagator(refiner=ref if with_maps else None)
    core.set_keyframe(0, kf)
    expect = [core.step(0, image=imgs[0]).labels.copy()]
    expect += [core.step(i, *flows[i], image=imgs[i]).labels.copy() for i in range(1, 4)]

    proc, probe, pubs = _propagation_node(tmp_path, {'temporal_mode': 'cache1'},
                                          [int(v) for v in model.output_to_class],
                                          {'cache_levels': int(with_maps)}, features=True)
    try:
        cam, flow_pub, kf_labels, kf_probs, kf_feats, decision = (
            pubs[k] for k in ('cam', 'flow', 'kf_labels', 'kf_probs', 'kf_feats', 'decision'))
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC)
        assert probe.transition('propagation_node', Transition.TRANSITION_CONFIGURE, timeout=90), read_log(proc)
        assert probe.transition('propagation_node', Transition.TRANSITION_ACTIVATE)
        for pub in (cam, flow_pub, kf_labels, kf_probs, kf_feats):
            assert probe.wait_subscribers(pub)
        for i in range(4):
            h = Header(frame_id='cam', stamp=ns_to_stamp(10**9 + i * 10**8))
            decision.publish(String(data=json.dumps({'stamp_ns': 10**9 + i * 10**8, 'keyframe': i == 0})))
            if i == 0:
                lab_msg, probs_msg = semantics_to_msgs(kf, h)
                # labels first: the join must still wait for the cached map the keyframe node announced
                kf_labels.publish(lab_msg)
                kf_probs.publish(probs_msg)
                (feat_msg,) = features_to_msgs(kf, h)
                assert feat_msg.header.frame_id == 'cam#map=d1' and feat_msg.encoding == '32FC(64)'
                if with_maps:
                    kf_feats.publish(feat_msg)
            cam.publish(ndarray_to_image(imgs[i], 'rgb8', h))
            flow_pub.publish(empty_image('32FC4', h) if i == 0 else
                             ndarray_to_image(np.concatenate(flows[i], axis=2), '32FC4', h))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == i + 1, 30), read_log(proc)
        out = [image_to_ndarray(m) for _, m in probe.messages[graph.LABELS_TOPIC]]
        for i in range(4):
            np.testing.assert_array_equal(out[i], expect[i], err_msg=f'frame {i}')
        assert probe.wait_for(lambda: probe.count(graph.STATS_TOPIC) == 4, 10)
        st = [json.loads(m.data) for _, m in probe.messages[graph.STATS_TOPIC]]
        assert st[-1]['temporal_mode'] == 'cache1' and st[-1]['refined_frames'] == (3 if with_maps else 0)
        assert not any(s['degraded'] for s in st[1:])
        if not with_maps:
            def diag_message():
                for _, arr in reversed(probe.messages[graph.DIAGNOSTICS_TOPIC]):
                    for d in arr.status:
                        if d.name == 'vidseg: propagation_node':
                            return d.message
                return ''
            assert probe.wait_for(lambda: 'temporal module cache1 failed on 3 frame(s)' in diag_message()
                                  and 'no cached map d1' in diag_message(), 10), diag_message()
    finally:
        probe.close()
        stop_processes([proc])


def test_keyframe_node_sends_cached_maps(ros_domain, shared, tmp_path):
    """cache_levels 2: each keyframe result comes with its two cached maps (d1 at 1/16, e3 at 1/8 of the
    network input), announced in the latched info."""
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.ros.common import latched_qos
    proc = start_node('keyframe_node', {'input_qos': 'reliable', 'model': 'espnetv2_s0.5_512x256',
                                        'input_size': '256x128', 'schedule': 'fixed:2', 'cache_levels': 2},
                      log_dir=str(tmp_path))
    probe = Probe()
    try:
        probe.record(Image, graph.KEYFRAME_FEATURES_TOPIC)
        probe.record(Image, graph.KEYFRAME_LABELS_TOPIC)
        probe.record(String, graph.KEYFRAME_INFO_TOPIC, latched_qos())
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        assert probe.transition('keyframe_node', Transition.TRANSITION_CONFIGURE, timeout=90), read_log(proc)
        assert probe.transition('keyframe_node', Transition.TRANSITION_ACTIVATE)
        assert probe.wait_subscribers(cam)
        img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        for i in range(3):
            cam.publish(ndarray_to_image(img, 'rgb8', Header(frame_id='cam', stamp=ns_to_stamp(10**9 + i * 10**8))))
            probe.wait_for(lambda: probe.count(graph.KEYFRAME_LABELS_TOPIC) >= (i + 2) // 2, 20)
        assert probe.wait_for(lambda: probe.count(graph.KEYFRAME_FEATURES_TOPIC) == 4, 20), read_log(proc)
        feats = [m for _, m in probe.messages[graph.KEYFRAME_FEATURES_TOPIC]]
        assert sorted(m.header.frame_id for m in feats[:2]) == ['cam#map=d1', 'cam#map=e3']
        shapes = {m.header.frame_id.rpartition('=')[2]: image_to_ndarray(m).shape for m in feats[:2]}
        assert shapes == {'d1': (8, 16, 64), 'e3': (16, 32, 64)}   # s0.5: 64 channels each
        assert probe.count(graph.KEYFRAME_LABELS_TOPIC) == 2
        info = json.loads(probe.messages[graph.KEYFRAME_INFO_TOPIC][-1][1].data)
        assert info['cache_levels'] == 2
    finally:
        probe.close()
        stop_processes([proc])


def test_broken_cached_maps_are_clear_errors():
    """features_from_msgs (the propagation node's decoding): non-finite or non-float maps are refused
    with the map's name (the node then rejects that keyframe, counted as bad_keyframes)."""
    from vidseg_ros.core.errors import InputError
    from vidseg_ros.ros.propagation_node import features_from_msgs
    good = np.random.default_rng(0).random((4, 8, 3)).astype(np.float32)
    out = features_from_msgs({'d1': ndarray_to_image(good, '32FC3')})
    assert out['d1'].shape == (3, 4, 8) and np.array_equal(out['d1'], good.transpose(2, 0, 1))
    bad = good.copy()
    bad[1, 1, 1] = np.nan
    with pytest.raises(InputError, match='cached map d1 has non-finite values'):
        features_from_msgs({'d1': ndarray_to_image(bad, '32FC3')})
    with pytest.raises(InputError, match='cached map e3: expected a 32FC'):
        features_from_msgs({'e3': ndarray_to_image(np.zeros((4, 8, 3), np.uint8), '8UC3')})
