"""Reliability against bad input, in-process and in bounded time (nodes are driven by calling their
callbacks directly; their publishers are replaced by recorders).

Each case: a clear error or warning naming the cause, the node keeps running, the case is counted, and
(propagation node) every input frame is accounted for on /semantic/labels or /semantic/status.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros.conversions import (ConversionError, check_image, image_to_rgb, ndarray_to_image,  # noqa: E402
                                        ns_to_stamp)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


class Rec:
    """Stands in for a publisher: records what is published."""

    def __init__(self):
        self.msgs = []

    def publish(self, msg):
        self.msgs.append(msg)

    def get_subscription_count(self):
        return 1   # a recording subscriber is attached


def _node(cls, params=None, extra_args=()):
    import rclpy
    ctx = rclpy.Context()
    args = ['test', '--ros-args']
    for k, v in (params or {}).items():
        args += ['-p', f'{k}:={json.dumps(v) if not isinstance(v, str) else v}']
    rclpy.init(context=ctx, args=args + list(extra_args))
    try:
        node = cls(context=ctx)
    except BaseException:
        rclpy.try_shutdown(context=ctx)
        raise
    node._test_ctx = ctx
    return node


def _assert_configure_fails(cls, params, match, exc=Exception, call='configure'):
    """A node of ``cls`` with ``params``: the configure transition fails, and the node's ``call`` method
    (its configure step, or validate_params) raises ``exc`` matching ``match``."""
    node = _node(cls, params)
    try:
        assert node.trigger_configure().name == 'FAILURE'
        with pytest.raises(exc, match=match):
            getattr(node, call)()
    finally:
        _close(node)


def _close(node):
    import rclpy
    ctx = node._test_ctx
    try:
        stop = getattr(node, 'stop_workers', None)
        if stop:
            stop()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def _img(w, h, ns, value=0, enc='rgb8'):
    from std_msgs.msg import Header
    arr = np.full((h, w, 3), value, np.uint8)
    return ndarray_to_image(arr, enc, Header(frame_id='cam', stamp=ns_to_stamp(ns)))


def _bad_images(w=64, h=48, ns=0):
    """(name, message, expected error text) for each kind of broken camera image."""
    good = _img(w, h, ns)
    out = []
    m = _img(w, h, ns); m.encoding = 'yuv422_weird'
    out.append(('unsupported encoding', m, "encoding 'yuv422_weird' is not supported"))
    m = _img(w, h, ns); m.encoding = '32FC1'  # inconsistent: 3-byte pixels declared as 4-byte floats
    out.append(('inconsistent encoding', m, "'32FC1' is not supported"))
    m = _img(w, h, ns); m.step = w * 3 - 1
    out.append(('step < width', m, f'step {w * 3 - 1} < width*pixel bytes {w * 3}'))
    m = _img(w, h, ns); m.data = bytes(good.data)[:w * 3 * h // 2]
    out.append(('truncated', m, f'expected {w * 3 * h}'))
    m = _img(w, h, ns); m.width = 0; m.step = 0; m.data = b''
    out.append(('zero width', m, 'empty rgb8 image'))
    m = _img(w, h, ns); m.height = 0; m.data = b''
    out.append(('zero height', m, 'empty rgb8 image'))
    m = _img(w, h, ns); m.encoding = 'rgb8'; m.width = w * 2  # step now too small for the width
    out.append(('step does not match width', m, 'step'))
    return out


def test_bad_camera_images_raise_clear_errors():
    for name, msg, text in _bad_images():
        with pytest.raises(ConversionError) as ei:
            check_image(msg, named_only=True)
        assert text in str(ei.value), (name, str(ei.value))
        with pytest.raises(ConversionError):
            image_to_rgb(msg)


def test_big_endian_16bit_is_byte_swapped_like_cv_bridge():
    from sensor_msgs.msg import Image
    rgb16 = (np.arange(4 * 3 * 3, dtype=np.uint16).reshape(3, 4, 3) * 1800).astype(np.uint16)
    msg = Image(height=3, width=4, encoding='rgb16', is_bigendian=1, step=4 * 6,
                data=rgb16.astype('>u2').tobytes())
    got = image_to_rgb(msg)
    np.testing.assert_array_equal(got, np.round(rgb16 * (255 / 65535)).astype(np.uint8))
    # 8-bit data: the flag is meaningless and ignored
    m8 = _img(4, 3, 0, value=7)
    m8.is_bigendian = 1
    assert (image_to_rgb(m8) == 7).all()


# ------------------------------------------------------------------------ propagation node
def _prop(params):
    from vidseg_ros.ros.propagation_node import PropagationNode
    from std_msgs.msg import String
    from vidseg_ros.core.classes import CITYSCAPES
    # live mode unless a test says otherwise: these tests step frames through by hand and read each one's
    # status at once (with the default keyframe_wait a frame would first wait for its keyframe decision)
    node = _node(PropagationNode, dict({'input_qos': 'reliable', 'diagnostics_period': 0.0, 'keyframe_wait': 0.0,
                                        'keyframe_wait_max': 0.0}, **params))   # (a fixed bound where one is set)
    assert node.trigger_configure().name == 'SUCCESS'
    for a in ('labels_pub', 'color_pub', 'conf_pub', 'stats_pub', 'status_pub', 'classes_pub'):
        setattr(node, a, Rec())
    node.trigger_activate()
    node.on_info(String(data=json.dumps({'class_set': CITYSCAPES.to_dict(), 'class_map': list(range(19)) + [255]})))
    return node


def _flow(w, h, ns, dx=0.5):
    from std_msgs.msg import Header
    f = np.zeros((h, w, 4), np.float32)
    f[..., 0], f[..., 2] = dx, -dx
    return ndarray_to_image(f, '32FC4', Header(frame_id='cam', stamp=ns_to_stamp(ns)))


def _chain_start(ns):
    from std_msgs.msg import Header
    from vidseg_ros.ros.conversions import empty_image
    return empty_image('32FC4', Header(frame_id='cam', stamp=ns_to_stamp(ns)))


def _first_frame(node, ns, w, h, keyframe=None):
    """The first camera frame of a stream (after ``keyframe(node, ns, w, h)``, its keyframe result, when
    given) and its chain-start flow message."""
    if keyframe is not None:
        keyframe(node, ns, w, h)
    node.on_image(_img(w, h, ns))
    node.on_flow(_chain_start(ns))


def _keyframe(node, ns, w, h, cls=3):
    from std_msgs.msg import Header, String
    hdr = Header(frame_id='cam', stamp=ns_to_stamp(ns))
    node.on_decision(String(data=json.dumps({'stamp_ns': ns, 'keyframe': True, 'reason': 'schedule'})))
    probs = np.zeros((-(-h // 4), -(-w // 4), 20), np.uint8)
    probs[..., cls] = 255
    node.on_kf_probs(ndarray_to_image(probs, '8UC(20)', hdr))
    node.on_kf_labels(ndarray_to_image(np.full((h, w), cls, np.uint8), 'mono8', hdr))


def _decision(node, ns, kf=False):
    from std_msgs.msg import String
    node.on_decision(String(data=json.dumps({'stamp_ns': ns, 'keyframe': kf, 'reason': 'schedule'})))


def test_propagation_node_bad_input_and_time(ros_domain):
    from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
    W, H = 64, 48
    node = _prop({'flow_timeout': 0.2, 'source_timeout': 0.6, 'max_distance': 0})
    try:
        status = node.status_pub.msgs
        labels = node.labels_pub.msgs
        last = lambda: json.loads(status[-1].data)  # noqa: E731
        ms = 10**9 // 1000
        T = [10**10 + i * 33 * ms for i in range(40)]

        def frame(i, w=W, h=H, flow=True, kf=False):
            _decision(node, T[i], kf)
            node.on_image(_img(w, h, T[i]))
            if flow is True:
                node.on_flow(_flow(w, h, T[i]))
            elif flow == 'start':
                node.on_flow(_chain_start(T[i]))
            return last()

        assert frame(0, flow='start')['reasons'] == ['no_keyframe']
        _keyframe(node, T[0], W, H)            # late keyframe for frame 0: re-propagated
        st = frame(1)
        assert not st['degraded'] and st['distance'] == 1 and st['keyframe_stamp_ns'] == T[0]
        st = frame(2)
        assert st['confidence_scale'] == pytest.approx(0.97 ** 2)
        conf = image_to_ndarray(node.conf_pub.msgs[-1])
        assert 0 < conf.max() <= round(255 * 0.97 ** 2) + 1  # confidence decays with the distance

        # broken images: no labels, a status naming the cause, counted; the node keeps going
        n_labels = len(labels)
        bad = _bad_images(W, H, T[3])
        for name, msg, text in bad:
            node.on_image(msg)
            st = last()
            assert st['published'] is False and st['degraded'] and text in st['reasons'][0], (name, st)
        assert len(labels) == n_labels and node.counts['bad_images'] == len(bad)
        # duplicate stamp (of an already processed frame: out of order, published degraded)
        node.on_image(_img(W, H, T[2]))
        assert last()['reasons'] == ['out_of_order'] and len(labels) == n_labels + 1
        # duplicate stamp of a pending frame: counted, no second output
        _decision(node, T[3])
        node.on_image(_img(W, H, T[3]))
        node.on_image(_img(W, H, T[3]))
        assert last()['reasons'] == ['duplicate_stamp'] and last()['published'] is False
        node.on_flow(_flow(W, H, T[3]))
        node.on_flow(_chain_start(T[3]))      # a second flow for the same stamp is ignored
        assert node.counts['duplicate_images'] == 1
        assert not last()['degraded'] and last()['stamp_ns'] == T[3]

        # frame whose flow never comes: output after flow_timeout, labels held, degraded
        _decision(node, T[4])
        node.on_image(_img(W, H, T[4]))
        t0 = time.monotonic()
        while stamp_to_ns(labels[-1].header.stamp) != T[4]:
            assert time.monotonic() - t0 < 2
            time.sleep(0.02)
            node.pump()
        assert 0.15 < time.monotonic() - t0 < 1.0 and 'flow_missing' in last()['reasons']
        # the next frames: flow across the gap; labels stay held (degraded) until the next keyframe
        assert 'labels_held' in frame(5)['reasons']
        # dropped frame 6 (never arrives): flow across the gap is used, the gap is counted
        st = frame(7, kf=True)
        _keyframe(node, T[7], W, H, cls=5)
        st = frame(8)
        assert not st['degraded'] and st['distance'] == 1 and st['keyframe_stamp_ns'] == T[7]
        assert node.counts['input_gap_frames'] == 1  # frame 6 (dropped before the node) is counted

        # resolution change mid-stream: state reset (keyframe for the new size is awaited)
        resets = node.counts['resets']
        st = frame(9, w=96, h=40, flow='start')
        assert node.counts['resets'] == resets + 1 and node.counts['size_changes'] == 1
        assert st['reasons'] == ['no_keyframe'] and (labels[-1].width, labels[-1].height) == (96, 40)
        _keyframe(node, T[10], 96, 40, cls=7)
        st = frame(10, w=96, h=40)
        assert st['distance'] == 0 and (image_to_ndarray(labels[-1]) == 7).all()
        st = frame(11, w=96, h=40)
        assert not st['degraded']
        # time jump: the flow node restarts its chain -> labels held, marked
        assert 'flow_chain_restart' in frame(12, w=96, h=40, flow='start')['reasons']

        # the bag loops: time goes back by more than a second -> full restart
        resets = node.counts['resets']
        node.on_image(_img(96, 40, T[0] - 5 * 10**9))
        node.on_flow(_chain_start(T[0] - 5 * 10**9))
        assert node.counts['resets'] == resets + 1 and last()['reasons'] == ['no_keyframe']

        # silent sources: nothing from flow_node / keyframe_node for source_timeout -> degraded, and
        # frames stop waiting for flow
        _keyframe(node, T[0] - 4 * 10**9, 96, 40)
        node.on_image(_img(96, 40, T[0] - 4 * 10**9))
        node.on_flow(_chain_start(T[0] - 4 * 10**9))
        # an idle stream is not a silent node
        time.sleep(0.7)
        t_d = T[0] - 4 * 10**9 + 33 * ms
        _decision(node, t_d)
        node.on_image(_img(96, 40, t_d))
        node.on_flow(_flow(96, 40, t_d))
        assert last()['stamp_ns'] == t_d and not last()['degraded']
        # frames keep coming, nothing from either node: degraded, and frames stop waiting for flow
        node.cfg['flow_timeout'] = 30.0   # labels without flow below can only come from the silence rule
        t_a, t_b = t_d + 33 * ms, t_d + 66 * ms
        node.on_image(_img(96, 40, t_a))
        assert stamp_to_ns(labels[-1].header.stamp) == t_d  # A waits for its flow
        time.sleep(0.7)
        node.on_image(_img(96, 40, t_b))
        assert [stamp_to_ns(m.header.stamp) for m in labels[-2:]] == [t_a, t_b]
        for m in status[-2:]:
            assert {'keyframe_node_silent', 'flow_node_silent'} <= set(json.loads(m.data)['reasons'])
        diag = node.diagnostics()[0]
        assert diag[1] == 1 and 'keyframe_node_silent' in diag[2]  # WARN with the reason

        # accounting: every input frame has labels or a counted reason
        c = node.counts
        assert c['frames_in'] == c['frames_out'] + c['bad_images'] + c['duplicate_images']
        assert len(labels) == c['frames_out'] and len(status) == c['frames_in']
    finally:
        _close(node)


def test_propagation_node_warns_when_frames_are_too_far_apart(ros_domain):
    """The IAM fraction of the recent propagated frames: a WARN on /diagnostics while their median is above
    pipeline.FAR_APART_FRACTION (labels carried onto the wrong content: the scene moves far between
    frames), OK again once the frames follow each other closely; every frame still gets its labels."""
    from std_msgs.msg import Header
    from vidseg_ros.core.pipeline import FAR_APART_FRACTION
    from vidseg_ros.ros.propagation_node import RECENT_WINDOW
    W, H = 64, 48
    node = _prop({})
    try:
        def step(i, dx):   # a propagated frame whose content moved dx px (forward and backward agree)
            f = np.zeros((H, W, 4), np.float32)
            f[..., 0], f[..., 2] = dx, -dx
            _decision(node, T[i])
            node.on_image(_img(W, H, T[i]))
            node.on_flow(ndarray_to_image(f, '32FC4', Header(frame_id='cam', stamp=ns_to_stamp(T[i]))))

        T = [10**10 + i * 33 * 10**6 for i in range(80)]
        _first_frame(node, T[0], W, H, keyframe=_keyframe)
        for i in range(1, 8):                  # video: half a pixel per frame
            step(i, 0.5)
        (_, level, msg, vals), = node.diagnostics()
        assert level == 0 and 'too far apart' not in msg and vals['inconsistent_fraction_median'] < 0.05
        for i in range(8, 20):                 # 20 px per frame on a 64 px frame: a third comes from outside
            step(i, 20.0)
        (_, level, msg, vals), = node.diagnostics()
        assert vals['inconsistent_fraction_median'] > FAR_APART_FRACTION
        assert level == 1 and 'frames too far apart in time for propagation' in msg, msg
        assert 'of the median of the last 19 propagated frames' in msg
        for i in range(20, 40):                # close frames again: the recent median falls back
            step(i, 0.5)
        (_, level, msg, vals), = node.diagnostics()
        assert level == 0 and 'too far apart' not in msg, msg
        assert len(node.recent_fractions) == min(39, RECENT_WINDOW)
        assert len(node.labels_pub.msgs) == 40 and node.counts['degraded'] == 0
    finally:
        _close(node)


def test_propagation_node_names_stamps_that_do_not_advance(ros_domain):
    """A camera whose header.stamp stays at 0 (a misconfigured driver): every frame still gets labels (the
    current state's, degraded: out_of_order), and /diagnostics says why in words, which the counters
    alone did not; once the stamps advance again the warning goes (a window of recent frames)."""
    from vidseg_ros.ros.propagation_node import RECENT_WINDOW
    W, H = 64, 48
    node = _prop({})
    try:
        _first_frame(node, 0, W, H, keyframe=_keyframe)
        for _ in range(6):                       # the same stamp again and again
            _decision(node, 0)
            node.on_image(_img(W, H, 0))
        assert len(node.labels_pub.msgs) == 7 and node.counts['out_of_order'] == 6
        assert all(json.loads(m.data)['reasons'] == ['out_of_order'] for m in node.status_pub.msgs[1:])
        (_, level, msg, _), = node.diagnostics()
        assert level == 1 and "6 of the last 7 camera frames came with a stamp not newer" in msg, msg
        assert "is the camera's header.stamp set and increasing?" in msg
        T = [10**9 + i * 33 * 10**6 for i in range(RECENT_WINDOW)]
        for t in T[:8]:                          # a driver that stamps again: fewer than half stale
            _decision(node, t)
            node.on_image(_img(W, H, t))
            node.on_flow(_flow(W, H, t))
        (_, level, msg, _), = node.diagnostics()
        assert 'stamp not newer' not in msg, msg
    finally:
        _close(node)


def test_propagation_node_keyframe_overdue(ros_domain):
    """A keyframe announced but never delivered (network hung) -> degraded after source_timeout,
    while decisions keep coming; cleared when a result arrives."""
    W, H = 32, 24
    node = _prop({'flow_timeout': 0.2, 'source_timeout': 0.5})
    try:
        T = [10**10 + i * 33_000_000 for i in range(20)]
        _first_frame(node, T[0], W, H, _keyframe)
        _decision(node, T[1], kf=True)        # announced, result never comes
        for i in range(1, 12):
            if i > 1:
                _decision(node, T[i])          # 'busy' decisions keep the node from looking silent
            node.on_image(_img(W, H, T[i]))
            node.on_flow(_flow(W, H, T[i]))
            time.sleep(0.07)
        st = [json.loads(m.data) for m in node.status_pub.msgs]
        assert not st[1]['degraded'] and 'keyframe_overdue' in st[-1]['reasons']
        assert [s['distance'] for s in st[1:]] == list(range(1, 12))
        assert st[-1]['confidence_scale'] < st[1]['confidence_scale']
        _keyframe(node, T[12], W, H)
        node.on_image(_img(W, H, T[12]))
        node.on_flow(_flow(W, H, T[12]))
        last = json.loads(node.status_pub.msgs[-1].data)
        assert last['distance'] == 0 and not last['degraded']
    finally:
        _close(node)


def _flow_from(w, h, ns, ref_ns, dx=0.5):
    """A flow message that names the frame it starts from (as flow_node writes it)."""
    from vidseg_ros.ros.flow_node import flow_frame_id
    m = _flow(w, h, ns, dx)
    m.header.frame_id = flow_frame_id('cam', ref_ns)
    return m


def _halves_keyframe(node, ns, w, h):
    """Keyframe semantics with a vertical class boundary (left 3, right 5); returns its messages."""
    from std_msgs.msg import Header
    hdr = Header(frame_id='cam', stamp=ns_to_stamp(ns))
    lab = np.full((h, w), 3, np.uint8)
    lab[:, w // 2:] = 5
    probs = np.zeros((-(-h // 4), -(-w // 4), 20), np.uint8)
    probs[..., 3] = 255
    probs[:, probs.shape[1] // 2:, 3], probs[:, probs.shape[1] // 2:, 5] = 0, 255
    msgs = (ndarray_to_image(lab, 'mono8', hdr), ndarray_to_image(probs, '8UC(20)', hdr))
    _decision(node, ns, True)
    node.on_kf_probs(msgs[1])
    node.on_kf_labels(msgs[0])
    return msgs


def test_flow_across_a_gap_is_used_and_not_marked_held(ros_domain):
    """Issue 5: the flow message names the frame it starts from. A frame the flow node never saw is held
    (flow_missing), but the next flow spans the gap from the frame the labels were held from, so the
    following frames are propagated exactly and NOT marked degraded -- also when the keyframe arrives late
    and is re-propagated across the gap. Without the reference (or from a frame whose state is not held),
    the labels stay `labels_held` until the next keyframe, as before."""
    from vidseg_ros.core.propagation import Propagator
    from vidseg_ros.ros.conversions import image_to_ndarray
    from vidseg_ros.ros.propagation_node import decode_flow, semantics_from_msgs
    W, H = 64, 48
    node = _prop({'flow_timeout': 0.2, 'source_timeout': 0.0})
    try:
        T = [10**10 + i * 33_000_000 for i in range(20)]
        st = lambda: [json.loads(m.data) for m in node.status_pub.msgs]  # noqa: E731
        kf0 = _halves_keyframe(node, T[0], W, H)
        flows = {1: _flow_from(W, H, T[1], T[0], 2.0), 3: _flow_from(W, H, T[3], T[1], 4.0),
                 4: _flow_from(W, H, T[4], T[3], 1.0)}
        _first_frame(node, T[0], W, H)
        node.on_image(_img(W, H, T[1]))
        node.on_flow(flows[1])
        node.on_image(_img(W, H, T[2]))    # the flow node never saw frame 2: its flow never comes
        node.on_image(_img(W, H, T[3]))
        node.on_flow(flows[3])             # spans 1 -> 3
        node.on_image(_img(W, H, T[4]))
        node.on_flow(flows[4])
        s = st()
        assert [x['stamp_ns'] for x in s] == T[:5]
        assert [x['reasons'] for x in s] == [[], [], ['flow_missing'], [], []]
        assert [x['distance'] for x in s] == [0, 1, 2, 3, 4]
        # the labels are the offline Propagator's with the same flows (frame 2 held, 1 -> 3 applied to it)
        ref = Propagator()
        ref.set_keyframe(T[0], semantics_from_msgs(*kf0, node.class_map))
        want = [ref.step(T[0]).labels.copy(), ref.step(T[1], *decode_flow(flows[1])).labels.copy(),
                ref.step(T[2]).labels.copy()]
        want += [ref.step(T[3], *decode_flow(flows[3]), flow_ref=T[1]).labels.copy(),
                 ref.step(T[4], *decode_flow(flows[4])).labels.copy()]
        got = [image_to_ndarray(m) for m in node.labels_pub.msgs]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        assert not np.array_equal(got[3], got[2])   # frame 3 was really propagated (boundary moved)

        # frame 5's flow lost on the way (the flow node saw 5): frame 6's flow starts at 5, whose state the
        # node does not have -> held until the next keyframe, as before
        node.on_image(_img(W, H, T[5]))
        node.on_image(_img(W, H, T[6]))
        node.on_flow(_flow_from(W, H, T[6], T[5]))
        assert [x['reasons'] for x in st()[5:]] == [['flow_missing'], ['labels_held']]

        # a keyframe whose result arrives late, with a gap after it: re-propagated across the gap
        _decision(node, T[7], True)
        node.on_image(_img(W, H, T[7]))
        node.on_flow(_flow_from(W, H, T[7], T[6]))
        node.on_image(_img(W, H, T[8]))    # never seen by the flow node
        node.on_image(_img(W, H, T[9]))
        node.on_flow(_flow_from(W, H, T[9], T[7], 3.0))
        _halves_keyframe(node, T[7], W, H)  # late: frames 8 and 9 were already published
        assert node.counts['keyframes_late'] == 1
        node.on_image(_img(W, H, T[10]))
        node.on_flow(_flow_from(W, H, T[10], T[9]))
        last = st()[-1]
        assert last['stamp_ns'] == T[10] and last['keyframe_stamp_ns'] == T[7] and last['distance'] == 3
        assert last['reasons'] == [] and not last['degraded']
        c = node.counts
        assert c['degraded_labels_held'] == 3 and c['degraded_flow_missing'] == 3  # frames 6, 7, 9 / 2, 5, 8
    finally:
        _close(node)


def test_late_flow_of_the_newest_frame_is_still_used(ros_domain):
    """A flow that arrives after its frame was output held (flow_timeout): the frame's labels stay as
    published (flow_missing), but the state takes the flow, so the next frames are not `labels_held`."""
    from vidseg_ros.ros.conversions import stamp_to_ns
    W, H = 64, 48
    node = _prop({'flow_timeout': 0.2, 'source_timeout': 0.0})
    try:
        T = [10**10 + i * 33_000_000 for i in range(6)]
        _first_frame(node, T[0], W, H, _halves_keyframe)
        node.on_image(_img(W, H, T[1]))
        t0 = time.monotonic()
        while stamp_to_ns(node.labels_pub.msgs[-1].header.stamp) != T[1]:  # waits flow_timeout, then held
            assert time.monotonic() - t0 < 2
            time.sleep(0.02)
            node.pump()
        node.on_flow(_flow_from(W, H, T[1], T[0], 3.0))   # too late for frame 1's labels
        node.on_image(_img(W, H, T[2]))
        node.on_flow(_flow_from(W, H, T[2], T[1]))
        st = [json.loads(m.data) for m in node.status_pub.msgs]
        assert [x['reasons'] for x in st] == [[], ['flow_missing'], []]
        assert node.counts['late_flows'] == 1 and node.counts['late_flows_applied'] == 1
        # a late flow for a frame that is no longer the newest changes nothing
        node.on_image(_img(W, H, T[3]))
        node.on_flow(_flow_from(W, H, T[3], T[2]))
        node.on_flow(_flow_from(W, H, T[2], T[1]))
        assert node.counts['duplicate_flows'] + node.counts['late_flows'] == 2
        assert node.counts['late_flows_applied'] == 1
    finally:
        _close(node)


def test_node_processes_tune_malloc(monkeypatch):
    """The glibc settings every node applies are accepted (mallopt returns 0 for a value it refuses,
    which would silently leave the defaults) and can be turned off."""
    import ctypes.util
    from vidseg_ros.ros import common
    if not sys.platform.startswith('linux') or 'glibc' not in ' '.join(__import__('platform').libc_ver()):
        pytest.skip('glibc only')
    assert ctypes.util.find_library('c')
    assert common.tune_malloc() is True
    monkeypatch.setenv('VIDSEG_MALLOC_TUNE', '0')
    assert common.tune_malloc() is False


def test_propagator_flow_ref_needs_the_held_frame():
    """Core rule behind it: a flow from frame r lands exactly only if the state was held since r."""
    from vidseg_ros.core.propagation import Propagator, Semantics
    lab = np.full((8, 8), 2, np.uint8)
    f = np.zeros((8, 8, 2), np.float32)
    p = Propagator()
    p.set_keyframe(0, Semantics(lab))
    p.step(0)
    assert not p.step(1, f, f).degraded
    assert p.step(2).degraded                        # held (no flow)
    assert not p.step(3, f, f, flow_ref=1).degraded  # from the frame held since: exact again
    assert p.step(4).degraded
    assert p.step(5, f, f, flow_ref=3).degraded is False
    assert p.step(6, f, f, flow_ref=4).degraded      # from a frame whose state it does not have
    assert p.step(7, f, f).degraded                  # stays held until the next keyframe
    # a late flow for the newest (held) frame from the frame the state is exact for: applied
    p.set_keyframe(8, Semantics(lab))
    p.step(8)
    assert p.step(9).degraded
    assert not p.amend_flow(9, f, f, flow_ref=7)     # does not start where the state is exact
    assert p.amend_flow(9, f, f) and p.stats['amended_flows'] == 1
    assert not p.amend_flow(9, f, f)                 # has its flow now
    assert not p.step(10, f, f).degraded
    # several frames held in a row, their flows late, in order: each one lands, the last one clears it
    assert p.step(11).degraded and p.step(12).degraded
    assert not p.amend_flow(12, f, f)                # 11 is not resolved yet
    assert p.amend_flow(11, f, f) and p.current_output().degraded  # exact at 11, 12 still held
    assert p.amend_flow(12, f, f) and not p.current_output().degraded
    assert not p.amend_flow(10, f, f)                # had its flow in time


# ------------------------------------------------------------------------ flow node
def test_flow_node_bad_input_and_time(ros_domain):
    from rclpy.serialization import serialize_message
    from vidseg_ros.ros.flow_node import FlowNode, parse_flow_frame_id
    node = _node(FlowNode, {'input_qos': 'reliable', 'diagnostics_period': 0.0, 'max_gap': 0.5})
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        node.flow_pub = Rec()
        node.trigger_activate()
        out = node.flow_pub.msgs
        T = [10**10 + i * 33_000_000 for i in range(10)]
        rng = np.random.default_rng(0)
        tex = (rng.random((48, 80, 3)) * 255).astype(np.uint8)

        def send(ns, x=0, w=64):
            from std_msgs.msg import Header
            node.on_image(ndarray_to_image(np.ascontiguousarray(tex[:, x:x + w]), 'rgb8',
                                           Header(frame_id='c', stamp=ns_to_stamp(ns))))

        send(T[0]); send(T[1], 2)
        assert out[0].width == 0 and out[1].encoding == '32FC4' and out[1].width > 0
        for _, msg, _ in _bad_images(64, 48, T[2]):
            node.on_image(serialize_message(msg))  # as the camera subscription gets them: serialized
        node.on_image(b'\x00\x01\x00\x00\x07')   # bytes that are no Image at all
        assert node.counts['bad_images'] == 8 and len(out) == 2
        send(T[1], 2)                          # duplicate stamp: no output
        assert node.counts['duplicate_stamps'] == 1 and len(out) == 2
        send(T[3], 4)                          # flow across the gap left by frame 2
        assert out[-1].width > 0 and parse_flow_frame_id(out[-1].header.frame_id) == ('c', T[1])
        send(T[4], 4, w=60)                    # size change -> chain start
        send(T[2], 4, w=60)                    # time backwards -> chain start
        send(T[2] + 2 * 10**9, 4, w=60)        # time jump > max_gap -> chain start
        assert [m.width for m in out[-3:]] == [0, 0, 0]
        c = node.counts
        assert (c['size_changes'], c['time_backwards'], c['gaps']) == (1, 1, 1)
    finally:
        _close(node)


def test_flow_node_survives_frames_too_small_for_flow(ros_domain):
    """Frames smaller than DIS needs: the flow cannot be computed, and that used to raise out of the
    callback and kill the node. Now each such frame goes out as a chain start (the propagation node holds
    its labels), is counted (flow_errors) and makes the node WARN with the error; frames of a usable size
    get flow again."""
    from std_msgs.msg import Header
    from vidseg_ros.ros.flow_node import FlowNode
    node = _node(FlowNode, {'input_qos': 'reliable', 'diagnostics_period': 0.0})
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        node.flow_pub = Rec()
        node.trigger_activate()
        out = node.flow_pub.msgs
        rng = np.random.default_rng(0)

        def send(i, w, h):
            img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
            hdr = Header(frame_id='c', stamp=ns_to_stamp(10**10 + i * 33_000_000))
            node.on_image(ndarray_to_image(img, 'rgb8', hdr))

        for i in range(4):
            send(i, 6, 6)
        assert len(out) == 4 and all(m.width == 0 for m in out)     # chain starts, one per frame
        assert node.counts['flow_errors'] == 3 and node.counts['flows'] == 0
        (_, level, msg, vals), = node.diagnostics()
        assert level == 1 and '3 frame(s) without flow' in msg and 'too small for DIS flow' in msg, msg
        send(4, 64, 48)                                             # a usable size: the chain restarts
        send(5, 64, 48)
        assert out[-2].width == 0 and out[-1].width > 0 and node.counts['flows'] == 1
        assert vals['flow_errors'] == 3
    finally:
        _close(node)


# ------------------------------------------------------------------------ keyframe node
def test_nonfinite_network_outputs_are_sanitised():
    from vidseg_ros.core.errors import InputError
    from vidseg_ros.core.models.base import Segmentation
    from vidseg_ros.ros.keyframe_node import make_semantics_fn, sanitize_segmentation
    probs = np.full((20, 8, 8), 0.05, np.float32)
    probs[2] = 0.05 + 0.0  # all equal: argmax 0
    probs[:, 0, :3] = np.nan
    probs[4, 5, 5] = np.inf
    seg = Segmentation(probs=probs, labels=np.zeros((8, 8), np.uint8))
    clean, n = sanitize_segmentation(seg)
    assert n == 4 and np.isfinite(clean.probs).all()
    assert (clean.labels[0, :3] == 255).all() and clean.labels[5, 5] == 255 and clean.probs[:, 5, 5].max() == 0
    with pytest.raises(InputError, match='non-finite'):
        sanitize_segmentation(Segmentation(probs=np.full((20, 8, 8), np.nan, np.float32),
                                           labels=np.zeros((8, 8), np.uint8)))

    class NaNModel:
        output_to_class = np.array(list(range(19)) + [255], np.uint8)

        def segment(self, rgb):
            return Segmentation(probs=probs.copy(), labels=np.zeros((8, 8), np.uint8))
    seen = []
    sem = make_semantics_fn(NaNModel(), 1, seen.append)(np.zeros((8, 8, 3), np.uint8))
    assert seen == [4] and sem.labels[0, 0] == 255 and sem.probs.dtype == np.uint8


@pytest.fixture(scope='module')
def wrong_class_weights(tmp_path_factory):
    import torch
    from pathlib import Path
    import vidseg_ros
    sd = torch.load(str(Path(vidseg_ros.__file__).parent / 'weights' / 'default.pt'), map_location='cpu',
                    weights_only=True)
    sd = {k: (v[:12].clone() if hasattr(v, 'shape') and v.ndim and v.shape[0] == 20 else v) for k, v in sd.items()}
    p = tmp_path_factory.mktemp('w') / 'wrong_classes.pt'
    torch.save(sd, str(p))
    return p


@pytest.mark.parametrize('case', ['missing', 'corrupt', 'wrong_classes', 'out_of_range', 'unknown', 'bad_value'])
def test_keyframe_node_configure_rejects_bad_config(ros_domain, tmp_path, case, wrong_class_weights):
    from vidseg_ros.ros.keyframe_node import KeyframeNode
    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(b'not a checkpoint')
    params, extra, reason = {'warmup': False, 'num_threads': 1}, [], ''
    if case == 'missing':
        params['weights'], reason = str(tmp_path / 'nope.pt'), 'not found'
    elif case == 'corrupt':
        params['weights'], reason = str(corrupt), 'cannot read weights'
    elif case == 'wrong_classes':
        params['weights'], reason = str(wrong_class_weights), 'expected 20 outputs, file has 12'
    elif case == 'out_of_range':
        params['scale'], reason = 0, 'parameter scale must be in [1, 16], got 0'
    elif case == 'unknown':
        params['shedule'], reason = 'fixed:3', 'unknown parameter shedule'
    elif case == 'bad_value':
        params['schedule'], reason = 'fixed:zero', "parameter schedule: interval must be a number in [1, 10000], got 'zero'"
    node = _node(KeyframeNode, params, extra)
    try:
        assert node.trigger_configure().name == 'FAILURE'
        assert node._state_machine.current_state[0] == 1  # still unconfigured
        with pytest.raises(Exception) as ei:  # the same reason the transition logged
            node.validate_params()
            node.configure()
        assert reason in str(ei.value), str(ei.value)
        assert not (tmp_path / 'nope.pt').exists()
    finally:
        _close(node)


def test_keyframe_node_forces_keyframe_on_size_change_and_reports_stuck(ros_domain):
    from vidseg_ros.core.models.base import Segmentation
    from vidseg_ros.ros.keyframe_node import KeyframeNode, make_semantics_fn
    node = _node(KeyframeNode, {'warmup': False, 'num_threads': 1, 'schedule': 'fixed:100',
                                'input_qos': 'reliable', 'diagnostics_period': 0.0, 'stuck_timeout': 0.5})
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        for a in ('labels_pub', 'probs_pub', 'decision_pub', 'info_pub'):
            setattr(node, a, Rec())
        node.trigger_activate()

        class NaNModel:
            output_to_class = np.array(list(range(19)) + [255], np.uint8)

            def segment(self, rgb):
                p = np.full((20, 8, 8), 0.05, np.float32)
                p[:, 0, 0] = np.nan
                return Segmentation(probs=p, labels=np.zeros((8, 8), np.uint8))
        node.semantics_fn = make_semantics_fn(NaNModel(), 1, node._on_nonfinite)
        T = [10**10 + i * 33_000_000 for i in range(6)]
        node._process((0, _img(64, 48, T[0])))
        node._process((1, _img(64, 48, T[1])))
        node._process((2, _img(80, 48, T[2])))   # new resolution: keyframe forced despite fixed:100
        node._process((3, _img(80, 48, T[3])))
        dec = [json.loads(m.data)['keyframe'] for m in node.decision_pub.msgs]
        assert dec == [True, False, True, False] and node.counts['forced_size_change'] == 1
        assert node.counts['nonfinite_keyframes'] == 2 and node.counts['nonfinite_pixels'] == 2
        assert len(node.labels_pub.msgs) == 2
        d = node.diagnostics()[0]
        assert d[1] == 1 and 'NaN' in d[2]
        node.busy_since = time.monotonic() - 1.0  # a network pass that has not returned
        d = node.diagnostics()[0]
        assert d[1] == 2 and d[2].startswith('stuck') and d[3]['stuck'] is True
    finally:
        _close(node)


def test_keyframe_node_takes_serialized_camera_images(ros_domain):
    """The keyframe node subscribes to the camera serialized: a good message reaches the worker with its
    header and pixels, bytes that are no Image are counted as bad images and never raise."""
    from rclpy.serialization import serialize_message
    from vidseg_ros.ros.conversions import image_to_rgb
    from vidseg_ros.ros.keyframe_node import KeyframeNode
    node = _node(KeyframeNode, {'warmup': False, 'num_threads': 1, 'schedule': 'fixed:100',
                                'diagnostics_period': 0.0})
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        node.trigger_activate()
        got = []
        node.worker.submit = got.append
        msg = _img(64, 48, 10**10 + 7, value=9)
        node.on_image_raw(serialize_message(msg))
        node.on_image_raw(b'\x00\x01 not an image')
        assert len(got) == 1 and got[0][1].header.stamp == msg.header.stamp
        assert (image_to_rgb(got[0][1]) == 9).all()
        assert node.counts['frames'] == 1 and node.counts['bad_images'] == 1
    finally:
        _close(node)


# ------------------------------------------------------------------------ manager restart hook
def test_manager_kills_stuck_or_hung_node_by_pid(ros_domain):
    from diagnostic_msgs.msg import DiagnosticArray
    from vidseg_ros.ros.common import diagnostic_status
    from vidseg_ros.ros.manager import LifecycleManager
    mgr = _node(LifecycleManager, {'node_names': ['keyframe_node'], 'autostart': False, 'restart_after': 0.3,
                                   'health_timeout': 0.2})
    victim = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '__node:=keyframe_node'])
    impostor = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'something_else'])
    try:
        m = mgr._by_name['keyframe_node']
        mgr.want_active = True

        def diag(pid, stuck):
            arr = DiagnosticArray()
            arr.status = [diagnostic_status('vidseg: keyframe_node', 'keyframe_node', 2, 'stuck',
                                            {'pid': pid, 'stuck': stuck})]
            mgr._on_diagnostics(arr)

        # a pid that is not the node's (reused by another process) is never killed
        diag(impostor.pid, True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:
            mgr._health_tick()
            time.sleep(0.1)
        assert impostor.poll() is None and m.kills == 0
        # the node's own pid, reported stuck: killed after restart_after
        diag(victim.pid, True)
        m.unhealthy_since = None
        t0 = time.monotonic()
        while victim.poll() is None and time.monotonic() - t0 < 6:
            mgr._health_tick()
            time.sleep(0.05)
        assert victim.wait(2) == -9 and m.kills == 1
        assert 0.25 < time.monotonic() - t0 < 5
    finally:
        for p in (victim, impostor):
            p.kill()
            p.wait(2)
        _close(mgr)


def test_manager_kills_a_hung_node_that_never_reported_its_pid(ros_domain):
    """A respawned node hung before its re-activation has published no /diagnostics, so no pid: the manager
    finds the one process started as that node in its own ROS domain and kills it once it is older than
    startup_timeout; a process of that name in another domain, or a young one, is left alone."""
    from vidseg_ros.ros.manager import LifecycleManager, node_processes
    mgr = _node(LifecycleManager, {'node_names': ['flow_node'], 'autostart': False, 'restart_after': 0.3,
                                   'health_timeout': 0.2, 'startup_timeout': 1.5})
    hang = [sys.executable, '-c', 'import time; time.sleep(60)', '--ros-args', '-r', '__node:=flow_node']
    other_domain = dict(os.environ, ROS_DOMAIN_ID=str((ros_domain + 1) % 233))
    victim = subprocess.Popen(hang)
    elsewhere = subprocess.Popen(hang, env=other_domain)
    other_graph = subprocess.Popen(hang + ['-r', '__ns:=/front'])     # another camera's graph, same domain
    try:
        m = mgr._by_name['flow_node']
        mgr.want_active = True
        assert m.pid is None
        assert [p for p, _ in node_processes('flow_node', str(ros_domain))] == [victim.pid]
        assert [p for p, _ in node_processes('flow_node', str(ros_domain), namespace='/front')] == [other_graph.pid]
        t0 = time.monotonic()
        while victim.poll() is None and time.monotonic() - t0 < 10:
            mgr._health_tick()   # no such service: unresponsive from the first tick
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert victim.wait(2) == -9 and m.kills == 1
        assert 1.3 < took < 8, took   # not before the process is startup_timeout old
        assert elsewhere.poll() is None and other_graph.poll() is None
    finally:
        for p in (victim, elsewhere, other_graph):
            p.kill()
            p.wait(2)
        _close(mgr)


def test_manager_warns_when_a_node_stays_unlinked(ros_domain):
    """An active node reporting internal topics with no peer (links_unmatched) for longer than links_grace
    turns its lifecycle status WARN with the topics named; linked again, OK again."""
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import State
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.common import diag_level, diagnostic_status
    from vidseg_ros.ros.manager import LifecycleManager
    mgr = _node(LifecycleManager, {'node_names': ['propagation_node'], 'autostart': False, 'links_grace': 0.3})
    published = []
    real_pub = mgr.diag_pub
    mgr.diag_pub = type('P', (), {'publish': lambda self, arr: published.append(arr)})()
    try:
        m = mgr._by_name['propagation_node']
        m.state, m.responsive, mgr.want_active = State.PRIMARY_STATE_ACTIVE, True, True

        def report(links):
            arr = DiagnosticArray()
            arr.status = [diagnostic_status('vidseg: propagation_node', 'propagation_node', 0, 'running',
                                            {'pid': 1, graph.LINKS_UNMATCHED_KEY: links})]
            mgr._on_diagnostics(arr)
            mgr._publish_diagnostics()
            st = published[-1].status[0]
            level = int.from_bytes(st.level, 'little') if isinstance(st.level, bytes) else int(st.level)
            return level, st.message, {kv.key: kv.value for kv in st.values}[graph.LINKS_UNMATCHED_KEY]
        ok, warn = diag_level('OK'), diag_level('WARN')
        assert report('') == (ok, 'active', '')
        assert report('sub:/vidseg/flow') == (ok, 'active', 'sub:/vidseg/flow')   # within the grace
        time.sleep(0.4)
        assert report('sub:/vidseg/flow') == (warn, 'active; not linked: sub:/vidseg/flow', 'sub:/vidseg/flow')
        assert report('') == (ok, 'active', '')
        assert report('sub:/vidseg/flow') == (ok, 'active', 'sub:/vidseg/flow')   # a new grace period
    finally:
        mgr.diag_pub = real_pub
        _close(mgr)


def test_manager_records_and_logs_slow_service_calls(ros_domain):
    """Every manager service call records how long it waited for the server and for the reply; a slow
    call and an unanswered one are reported (to find where the time goes when DDS is slow)."""
    import threading
    from rclpy.executors import MultiThreadedExecutor
    from std_srvs.srv import Trigger
    from vidseg_ros.ros.manager import LifecycleManager
    mgr = _node(LifecycleManager, {'node_names': ['keyframe_node'], 'autostart': False})
    delay = [0.6]

    def slow(_req, res):
        time.sleep(delay[0])
        res.success = True
        return res

    srv = mgr.create_service(Trigger, '/slow_test_srv', slow)
    cli = mgr.create_client(Trigger, '/slow_test_srv')
    ex = MultiThreadedExecutor(num_threads=3, context=mgr._test_ctx)
    ex.add_node(mgr)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    try:
        mgr.SLOW_CALL_S = 0.3
        res = mgr._call(cli, Trigger.Request(), 10.0)
        assert res is not None and res.success
        name, wait_server, wait_reply, answered = mgr.call_times[-1]
        assert name == '/slow_test_srv' and answered and 0.5 < wait_reply < 9.0 and wait_server >= 0
        delay[0] = 1.5
        assert mgr._call(cli, Trigger.Request(), 0.3) is None
        assert mgr.call_times[-1][0] == '/slow_test_srv' and not mgr.call_times[-1][3]
        missing = mgr.create_client(Trigger, '/no_such_srv')
        assert mgr._call(missing, Trigger.Request(), 0.2) is None
    finally:
        ex.shutdown(timeout_sec=3.0)
        mgr.destroy_service(srv)
        _close(mgr)


def test_failing_temporal_module_keeps_labels_flowing(ros_domain, shared):
    """temporal_mode region with keyframe semantics whose class planes differ from its network's:
    every propagated frame still gets (plain warp) labels, and /diagnostics says why."""
    from std_msgs.msg import String
    from vidseg_ros.core.classes import CITYSCAPES
    W, H = 64, 32
    node = _prop({'temporal_mode': 'region', 'model': 'espnetv2_s0.5_512x256', 'region_tile_area': 0.3})
    try:
        assert node.prop.refiner.tile_area == 0.3 and node.prop.refiner.tile == (160, 256)   # strip
        cmap = list(range(19)) + [255]
        cmap[0], cmap[1] = 1, 0          # a keyframe model with another plane order
        node.on_info(String(data=json.dumps({'class_set': CITYSCAPES.to_dict(), 'class_map': cmap})))
        T = [10**10 + i * 33_000_000 for i in range(4)]
        _first_frame(node, T[0], W, H, _keyframe)
        for t in T[1:]:
            node.on_image(_img(W, H, t))
            node.on_flow(_flow(W, H, t))
        assert len(node.labels_pub.msgs) == 4 and node.counts['step_errors'] == 0
        assert node.prop.stats['module_errors'] == 3
        (_, level, msg, vals), = node.diagnostics()
        from vidseg_ros.ros.common import diag_level
        assert level == diag_level('WARN') and 'temporal module region failed on 3 frame(s)' in msg
        assert 'other class planes' in msg and vals['propagator_module_errors'] == 3
    finally:
        _close(node)


def test_propagation_node_sheds_its_temporal_module_when_behind(ros_domain, shared):
    """refine_max_lag (live mode): a frame that lags more than refine_max_lag beyond the lowest lag of the
    recent frames -- by its stamp's age on the ROS clock, by a newer camera frame already received, or by
    its wait in the node -- gets the plain warp instead of the region pass, and a late keyframe's
    catch-up then skips the module too; counted, WARN on /diagnostics; frames that keep up are refined,
    however large the pipeline's own latency. With keyframe_wait too; refine_max_lag 0 never skips."""
    import time
    from vidseg_ros.ros.common import diag_level
    W, H = 64, 32
    node = _prop({'temporal_mode': 'region', 'model': 'espnetv2_s0.5_512x256', 'region_tile_area': 0.3,
                  'refine_max_lag': 0.5})
    try:
        def st():   # the propagator's counters (a restart starts them again)
            return node.prop.stats

        def stamp():
            return node.get_clock().now().nanoseconds

        def frame(t, wait=0.0):
            node.on_image(_img(W, H, t))
            time.sleep(wait)
            node.on_flow(_flow(W, H, t))

        _first_frame(node, stamp(), W, H, _keyframe)
        for _ in range(2):
            frame(stamp())
        assert st()['refined_frames'] == 2 and st()['refine_skipped'] == 0
        (_, level, msg, _), = node.diagnostics()
        assert 'skipped' not in msg
        # its flow comes 1.2 s after the image: 1.2 s old on the ROS clock and waiting here: behind
        frame(stamp(), wait=1.2)
        assert st()['refined_frames'] == 2 and st()['refine_skipped'] == 1
        assert len(node.labels_pub.msgs) == 4 and node.counts['degraded'] == 0   # labels still go out
        frame(stamp())
        assert st()['refined_frames'] == 3 and st()['refine_skipped'] == 1        # caught up
        # stamps of another clock (a bag's, 1970): no age; a camera frame 1.5 s newer already received
        node._restart('test')
        T = [10**10, 10**10 + 40_000_000, 10**10 + 80_000_000, 10**10 + 1_580_000_000]
        _first_frame(node, T[0], W, H, _keyframe)
        frame(T[1])
        node.on_image(_img(W, H, T[2]))
        node.on_image(_img(W, H, T[3]))
        node.on_flow(_flow(W, H, T[2]))
        assert st()['refined_frames'] == 1 and st()['refine_skipped'] == 1
        # a late keyframe (for T[1]) while the newest stepped frame (T[2]) is 1.5 s behind the camera:
        # its catch-up skips the module
        _keyframe(node, T[1], W, H, cls=5)
        assert node.counts['keyframes_late'] == 1
        assert st()['catch_up_refine_skipped'] == 1 and st()['refined_frames'] == 1
        node.on_flow(_flow(W, H, T[3]))    # the newest frame is not behind anything: refined
        assert st()['refined_frames'] == 2 and st()['refine_skipped'] == 1
        (_, level, msg, vals), = node.diagnostics()
        assert level == diag_level('WARN'), msg
        assert 'temporal module region skipped on 1 of 4 frame(s) and 1 catch-up step(s) to keep up' in msg, msg
        assert vals['propagator_refine_skipped'] == 1 and vals['propagator_catch_up_refine_skipped'] == 1
        # a pipeline that is slow but keeps up (every frame 0.8 s late): the lag's floor, not behind
        node._restart('test')
        T = [stamp() - 800_000_000 + i * 40_000_000 for i in range(4)]
        _first_frame(node, T[0], W, H, _keyframe)
        for t in T[1:]:
            frame(t)
        assert st()['refined_frames'] == 3 and st()['refine_skipped'] == 0
        # while frames wait for keyframes too (keyframe_wait: the module is shed to keep up there as well);
        # never with refine_max_lag 0
        old = stamp() - 3_000_000_000
        for wait in (0.0, 5.0):
            node.cfg = {**node.cfg, 'keyframe_wait': wait, 'refine_max_lag': 0.5}
            assert node._behind(old)
            node.cfg = {**node.cfg, 'refine_max_lag': 0.0}
            assert not node._behind(old)
    finally:
        _close(node)


def test_propagation_node_waits_for_keyframes_only_while_they_come_within_keyframe_wait(ros_domain):
    """keyframe_wait: a keyframe frame waits for its network result while the recent results came within
    the bound (median of the last ones, image -> result); once they come later, keyframe frames go out at
    once instead of waiting out the bound for nothing (counted, said on /diagnostics), and waiting resumes
    when the results come back within it."""
    import time
    from std_msgs.msg import Header
    W, H = 32, 24
    node = _prop({'keyframe_wait': 0.3, 'flow_timeout': 5.0})
    out = node.labels_pub.msgs

    def result(ns, cls=3):
        hdr = Header(frame_id='cam', stamp=ns_to_stamp(ns))
        probs = np.zeros((-(-H // 4), -(-W // 4), 20), np.uint8)
        probs[..., cls] = 255
        node.on_kf_probs(ndarray_to_image(probs, '8UC(20)', hdr))
        node.on_kf_labels(ndarray_to_image(np.full((H, W), cls, np.uint8), 'mono8', hdr))

    def keyframe_frame(ns, delay, waits):
        n = len(out)
        _decision(node, ns, kf=True)
        node.on_image(_img(W, H, ns))
        node.on_flow(_flow(W, H, ns))
        assert len(out) == n + (0 if waits else 1), (ns, waits)   # waiting for its result, or out at once
        time.sleep(delay)
        result(ns)
        assert len(out) == n + 1

    try:
        T = [10**10 + i * 40_000_000 for i in range(7)]
        _first_frame(node, T[0], W, H, _keyframe)
        keyframe_frame(T[1], 0.4, waits=True)    # slow results: the first two are waited for (not measured yet)
        keyframe_frame(T[2], 0.4, waits=True)
        assert node.counts['keyframe_wait_skipped'] == 0
        keyframe_frame(T[3], 0.02, waits=False)  # median 0.4 s > 0.3 s: no waiting
        keyframe_frame(T[4], 0.02, waits=False)  # [0.4, 0.4, 0.02] -> 0.4
        assert node.counts['keyframe_wait_skipped'] == 2
        (_, _, msg, vals), = node.diagnostics()
        assert '2 keyframe frame(s) did not wait' in msg and 'keyframe_wait 0.3 s' in msg, msg
        keyframe_frame(T[5], 0.02, waits=True)   # [0.4, 0.4, 0.02, 0.02] -> 0.21: waiting again
        assert node.counts['keyframe_wait_skipped'] == 2 and len(out) == 6
        assert 0.0 < vals['kf_delay_median_s'] < 1.0
    finally:
        _close(node)
    # keyframe_wait_max: the bound follows the measured delays (median x 1.25 + 0.05 s, up to the max), so
    # the same 0.4 s results that stopped the waiting above are waited for: 0.55 s bound
    node = _prop({'keyframe_wait': 0.3, 'keyframe_wait_max': 1.0, 'flow_timeout': 5.0})
    out = node.labels_pub.msgs
    try:
        T = [10**10 + i * 40_000_000 for i in range(5)]
        _first_frame(node, T[0], W, H, _keyframe)
        assert node._wait_bound() == 0.3                    # nothing measured yet: keyframe_wait
        keyframe_frame(T[1], 0.4, waits=True)
        keyframe_frame(T[2], 0.4, waits=True)
        # the measured delays are the 0.4 s sleeps plus this process's own handling (more on a loaded machine)
        delay = lambda: float(np.median(node.kf_delays))   # noqa: E731
        assert 0.4 <= delay() < 0.6, list(node.kf_delays)
        assert node._wait_bound() == pytest.approx(delay() * 1.25 + 0.05)   # ~0.55 s
        keyframe_frame(T[3], 0.4, waits=True)               # fixed 0.3 s: out at once (above)
        assert node.counts['keyframe_wait_skipped'] == 0
        (_, _, msg, vals), = node.diagnostics()
        assert vals['keyframe_wait_bound_s'] == pytest.approx(delay() * 1.25 + 0.05), vals
        node.cfg = {**node.cfg, 'keyframe_wait_max': 0.45}   # capped: the bound stays at the max ...
        assert node._wait_bound() == 0.45
        node.kf_delays.extend([0.6, 0.6, 0.6])              # ... and results later than it stop the waiting
        keyframe_frame(T[4], 0.02, waits=False)
        assert node.counts['keyframe_wait_skipped'] == 1
        (_, _, msg, _), = node.diagnostics()
        assert 'adaptive up to keyframe_wait_max 0.45 s' in msg, msg
    finally:
        _close(node)
    # before the first keyframe result there is nothing to propagate (a frame that stopped waiting would go out
    # void, no_keyframe) and the first pass is the slowest: the first keyframe frame waits up to the max
    from vidseg_ros.ros.conversions import image_to_ndarray
    node = _prop({'keyframe_wait': 0.3, 'keyframe_wait_max': 1.0, 'flow_timeout': 5.0})
    out = node.labels_pub.msgs
    try:
        assert node._wait_bound() == 1.0
        _decision(node, 10**10, kf=True)
        node.on_image(_img(W, H, 10**10))
        node.on_flow(_chain_start(10**10))
        time.sleep(0.45)
        node.pump()
        assert len(out) == 0          # past keyframe_wait: still waiting (with the fixed 0.3 s bound: void labels)
        result(10**10, cls=4)
        assert len(out) == 1 and (image_to_ndarray(out[0]) == 4).all()
        assert node.counts['keyframe_wait_expired'] == 0
        assert node._wait_bound() == 0.3   # a state now: keyframe_wait until two delays are measured
    finally:
        _close(node)
    # a max at or below keyframe_wait: the fixed bound; keyframe_wait 0 (live mode) never waits, whatever the max
    for wait, mx, bound in ((0.3, 0.2, 0.3), (0.3, 0.0, 0.3), (0.0, 1.0, 0.0)):
        node = _prop({'keyframe_wait': wait, 'keyframe_wait_max': mx, 'flow_timeout': 5.0})
        out = node.labels_pub.msgs
        try:
            node.kf_delays.extend([0.4, 0.4])
            assert node._wait_bound() == bound
            if wait == 0.0:
                _first_frame(node, 10**10, W, H, _keyframe)
                keyframe_frame(10**10 + 40_000_000, 0.0, waits=False)
        finally:
            _close(node)
    # a keyframe node that goes silent (hung, gone): frames wait for its decision at first, not once the
    # silence passes source_timeout; a bound longer than that (a replay that waits through stalls) still waits
    for wait, n_out in ((0.3, 3), (2.0, 1)):   # 0.3: T1 waited out its bound, T2 goes at once; 2.0: both wait
        node = _prop({'keyframe_wait': wait, 'source_timeout': 0.5, 'flow_timeout': 5.0})
        out = node.labels_pub.msgs
        try:
            T = [10**10 + i * 40_000_000 for i in range(3)]
            _first_frame(node, T[0], W, H, _keyframe)
            node.on_image(_img(W, H, T[1]))
            node.on_flow(_flow(W, H, T[1]))
            assert len(out) == 1   # no decision yet: waits for it
            time.sleep(0.7)        # no keyframe node message for 0.7 s > source_timeout
            node.on_image(_img(W, H, T[2]))
            node.on_flow(_flow(W, H, T[2]))
            assert len(out) == n_out, (wait, len(out))
        finally:
            _close(node)
    # the bound counts from each frame's own arrival (image + flow), not from when it reached the head of the
    # queue: a keyframe frame queued behind another one that waits out its bound does not wait a bound more
    node = _prop({'keyframe_wait': 0.3, 'flow_timeout': 5.0})
    out = node.labels_pub.msgs
    try:
        T = [10**10 + i * 40_000_000 for i in range(3)]
        _first_frame(node, T[0], W, H, _keyframe)
        for t in T[1:]:   # two keyframe frames whose results never come
            _decision(node, t, kf=True)
            node.on_image(_img(W, H, t))
            node.on_flow(_flow(W, H, t))
        assert len(out) == 1
        time.sleep(0.35)
        node.pump()
        assert len(out) == 3 and node.counts['keyframe_wait_expired'] == 2   # T2 did not start a new 0.3 s
    finally:
        _close(node)


def test_propagation_node_region_shape_parameter(ros_domain, shared):
    """region_shape picks the refreshed region's shape, region_catch_up how late keyframes are carried; a
    bad value fails configure with the reason."""
    node = _prop({'temporal_mode': 'region', 'model': 'espnetv2_s0.5_512x256', 'region_tile_area': 0.3,
                  'region_shape': 'tile', 'region_catch_up': 'newest'})
    try:
        assert node.prop.refiner.shape == 'tile' and node.prop.refiner.tile == (288, 144)
        assert node.prop.refiner.catch_up == 'newest' and node.prop.refiner.catch_up_newest_only
    finally:
        _close(node)
    from vidseg_ros.ros.propagation_node import PropagationNode
    for param, msg in (('region_shape', "region shape must be one of strip, tile, got 'round'"),
                       ('region_catch_up', "region catch_up must be one of all, newest, got 'round'")):
        _assert_configure_fails(PropagationNode, {'temporal_mode': 'region', 'model': 'espnetv2_s0.5_512x256',
                                                  param: 'round'}, msg)


def test_propagation_node_reorders_pending_frames(ros_domain):
    """Frames arriving out of order within the join window are stepped in stamp order (regression: the
    join used to step them in arrival order -> 'frame ids must increase' errors under load)."""
    from vidseg_ros.ros.conversions import stamp_to_ns
    W, H = 32, 24
    node = _prop({'flow_timeout': 0.5})
    try:
        T = [10**10 + i * 33_000_000 for i in range(6)]
        _first_frame(node, T[0], W, H, _keyframe)
        node.on_image(_img(W, H, T[2]))   # T2 before T1
        node.on_image(_img(W, H, T[1]))
        node.on_flow(_flow(W, H, T[1]))
        node.on_flow(_flow(W, H, T[2]))
        f4 = _flow(W, H, T[4])
        a = np.frombuffer(bytes(f4.data), np.float32).copy()
        a[:7] = np.nan
        a[7] = np.inf
        f4.data = a.tobytes()              # NaN/Inf in the flow: zeroed, counted
        node.on_flow(f4)                   # T4's flow before T3's and before both images
        node.on_flow(_flow(W, H, T[3]))
        node.on_image(_img(W, H, T[3]))
        node.on_image(_img(W, H, T[4]))
        got = [stamp_to_ns(m.header.stamp) for m in node.labels_pub.msgs]
        assert got == T[:5] and node.counts['step_errors'] == 0 and node.counts['nonfinite_flows'] == 1
        st = [json.loads(m.data) for m in node.status_pub.msgs]
        assert [s['distance'] for s in st] == [0, 1, 2, 3, 4] and not any(s['degraded'] for s in st)
    finally:
        _close(node)


@pytest.mark.parametrize('node_cls', ['flow_node.FlowNode', 'propagation_node.PropagationNode', 'manager.LifecycleManager'])
def test_unknown_and_out_of_range_parameters_rejected(ros_domain, node_cls):
    """Typos in a params file are not silently ignored: configure fails (lifecycle nodes) or the manager
    refuses to start, naming the parameter."""
    import importlib
    from vidseg_ros.core.errors import ConfigError
    mod, cls = node_cls.split('.')
    cls = getattr(importlib.import_module(f'vidseg_ros.ros.{mod}'), cls)
    for params, reason in (({'flow_timout': 0.5}, 'unknown parameter flow_timout'),
                           ({'health_period': 0.0} if cls.__name__ == 'LifecycleManager' else {'scale': 99},
                            'must be in')):
        if cls.__name__ == 'LifecycleManager':
            with pytest.raises(ConfigError, match=reason):
                _node(cls, dict(params, autostart=False))
            continue
        _assert_configure_fails(cls, params, reason, ConfigError, 'validate_params')


def test_manager_operation_lock_names_its_holder(ros_domain):
    """A manager operation (here the stop) that waits for another one (a node's re-activation) logs which
    one it waits for, then runs once the other has finished."""
    import threading
    from vidseg_ros.ros.manager import LifecycleManager
    mgr = _node(LifecycleManager, {'node_names': ['keyframe_node'], 'autostart': False})
    warnings = []
    mgr.get_logger().warning = lambda msg, **kw: warnings.append(msg)
    mgr.SLOW_CALL_S = 0.2
    held, release = threading.Event(), threading.Event()

    def holder():
        with mgr._operation('re-activating flow_node'):
            held.set()
            release.wait(5)

    th = threading.Thread(target=holder, daemon=True)
    th.start()
    try:
        assert held.wait(5) and mgr._ops_holder == 're-activating flow_node'
        threading.Timer(0.6, release.set).start()
        t0 = time.monotonic()
        with mgr._operation('shutdown'):
            assert mgr._ops_holder == 'shutdown' and time.monotonic() - t0 >= 0.5
        assert warnings[0] == 'shutdown: waiting for re-activating flow_node to finish'
        assert warnings[1].startswith('shutdown: waited ')
        assert mgr._ops_holder is None and not mgr._ops.locked()
        with mgr._operation('startup'):   # a free lock: no warning
            pass
        assert len(warnings) == 2
    finally:
        release.set()
        th.join(5)
        _close(mgr)


def _serve_and_spin(mgr, services):
    """Serve ``services`` [(type, name, callback)] from the manager's own node (a fake managed node) and spin
    it in the background: the manager's blocking calls then get their replies. Returns (executor, services)."""
    import threading
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import MultiThreadedExecutor
    cbg = ReentrantCallbackGroup()
    srvs = [mgr.create_service(t, name, cb, callback_group=cbg) for t, name, cb in services]
    ex = MultiThreadedExecutor(num_threads=4, context=mgr._test_ctx)
    ex.add_node(mgr)
    threading.Thread(target=ex.spin, daemon=True).start()
    return ex, srvs


def test_manager_transition_without_a_reply_checks_where_the_node_is(ros_domain):
    """A change_state reply that never comes (lost, as get_state replies can be) does not fail a transition
    the node made: the manager asks get_state and takes the goal state as done; a node that did not get
    there (here: still unconfigured) is still a failure."""
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from vidseg_ros.ros.manager import LifecycleManager
    mgr = _node(LifecycleManager, {'node_names': ['keyframe_node'], 'autostart': False, 'health_period': 60.0,
                                   'transition_timeout': 0.5})
    state = {'id': State.PRIMARY_STATE_UNCONFIGURED, 'moves': True}
    replies = []

    def change_state(_req, res):
        if state['moves']:
            state['id'] = State.PRIMARY_STATE_INACTIVE
        time.sleep(1.0)   # the reply comes after the caller's timeout: lost
        replies.append(time.monotonic())
        res.success = state['moves']
        return res

    def get_state(_req, res):
        res.current_state.id = state['id']
        return res

    ex, srvs = _serve_and_spin(mgr, [(ChangeState, '/keyframe_node/change_state', change_state),
                                     (GetState, '/keyframe_node/get_state', get_state)])
    try:
        m = mgr.nodes[0]
        mgr.GET_STATE_ATTEMPT_S = 0.5
        assert mgr._transition(m, Transition.TRANSITION_CONFIGURE)           # made it: inactive
        assert not mgr.call_times[-2][3]                                       # change_state: no reply
        state.update(id=State.PRIMARY_STATE_UNCONFIGURED, moves=False)
        assert not mgr._transition(m, Transition.TRANSITION_CONFIGURE)       # did not: still a failure
    finally:
        time.sleep(1.2)   # let the late replies finish before the services go away
        ex.shutdown(timeout_sec=3.0)
        for srv in srvs:
            mgr.destroy_service(srv)
        _close(mgr)


def test_manager_asks_get_state_again_after_a_lost_reply(ros_domain):
    """A get_state reply that never comes (rmw_fastrtps drops it while the server has not discovered the
    client's reply reader) costs one attempt, not the whole timeout: the manager asks again."""
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState
    from vidseg_ros.ros.manager import LifecycleManager
    # health probes (get_state too) only once a minute: the calls counted here are the manager's own
    mgr = _node(LifecycleManager, {'node_names': ['keyframe_node'], 'autostart': False, 'health_period': 60.0})
    calls = []

    def get_state(_req, res):
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(3.0)   # the first reply comes after the caller's whole timeout: lost
        res.current_state.id = State.PRIMARY_STATE_INACTIVE
        return res

    ex, (srv,) = _serve_and_spin(mgr, [(GetState, '/keyframe_node/get_state', get_state)])
    try:
        m = mgr.nodes[0]
        assert m.name == 'keyframe_node'
        mgr.GET_STATE_ATTEMPT_S = 0.5
        t0 = time.monotonic()
        assert mgr._get_state(m, 2.5) == State.PRIMARY_STATE_INACTIVE   # one request would wait 2.5 s for nothing
        assert time.monotonic() - t0 < 2.5 and len(calls) >= 2
        assert not mgr.call_times[-2][3] and mgr.call_times[-1][3]   # the first attempt unanswered, then a reply
        # without an answer at all it gives up at the timeout, not later
        mgr.GET_STATE_ATTEMPT_S = 0.3
        missing = type(m)(mgr, 'nobody')
        t0 = time.monotonic()
        assert mgr._get_state(missing, 0.8) is None and time.monotonic() - t0 < 3.0
    finally:
        if calls:   # let the slow first reply finish before the service goes away
            time.sleep(max(0.0, calls[0] + 3.2 - time.monotonic()))
        ex.shutdown(timeout_sec=3.0)
        mgr.destroy_service(srv)
        _close(mgr)


def test_caching_node_sorts_the_cached_maps_it_gets(ros_domain, shared):
    """temporal_mode cache1: a map of a level it does not reuse (a keyframe node with cache_levels 2) is
    counted as unused; an unknown or untagged one is counted as bad and logged; neither is joined."""
    from std_msgs.msg import Header
    from vidseg_ros.ros.conversions import ndarray_to_image, ns_to_stamp
    node = _prop({'temporal_mode': 'cache1', 'model': 'espnetv2_s0.5_512x256'})
    try:
        assert node.cache_keys == ('d1',)
        fmap = np.zeros((2, 4, 3), np.float32)
        for fid in ('cam#map=e3', 'cam#map=x9', 'cam'):
            node.on_kf_features(ndarray_to_image(fmap, '32FC3', Header(frame_id=fid, stamp=ns_to_stamp(10**9))))
        assert node.counts['features_unused'] == 1 and node.counts['bad_features'] == 2
        assert not node.kf_parts
        node.on_kf_features(ndarray_to_image(fmap, '32FC3', Header(frame_id='cam#map=d1', stamp=ns_to_stamp(10**9))))
        assert set(node.kf_parts[10**9]) == {'feat:d1'}
    finally:
        _close(node)


def test_propagation_node_two_sided_time_bound(ros_domain):
    """two_sided_max_wait_s: the node's timer releases frames that waited longer than the bound
    forward-only, even when no new frame comes; the causal topic is unaffected."""
    from vidseg_ros.ros.conversions import stamp_to_ns
    W, H = 64, 48
    node = _prop({'two_sided': True, 'two_sided_max_wait_s': 0.2, 'flow_timeout': 5.0, 'two_sided_trust': False})
    node.two_pub = two = Rec()
    try:
        assert node.two.max_wait_s == 0.2 and node.two.trust is False
        T = [10**10 + i * 33_000_000 for i in range(4)]
        out = lambda: [stamp_to_ns(m.header.stamp) for m in two.msgs]  # noqa: E731
        _first_frame(node, T[0], W, H, keyframe=lambda n, ns, w, h: _keyframe(n, ns, w, h, cls=3))
        for i in (1, 2):
            _decision(node, T[i])
            node.on_image(_img(W, H, T[i]))
            node.on_flow(_flow(W, H, T[i]))
        node.pump()
        assert out() == [T[0]] and len(node.labels_pub.msgs) == 3    # held: younger than 0.2 s
        time.sleep(0.3)
        node.pump()                                                  # what the node's timer does
        assert out() == T[:3] and node.counts['two_sided_forward_only'] == 2
    finally:
        _close(node)


def test_propagation_node_two_sided_with_region_refresh(ros_domain, shared):
    """two_sided:=true with temporal_mode region: the region-refreshed forward states go to the two-sided
    topic fused with the next keyframe carried back; a mode the fusion does not take fails configure."""
    from vidseg_ros.ros.conversions import stamp_to_ns
    from vidseg_ros.ros.propagation_node import PropagationNode
    W, H = 64, 32
    node = _prop({'temporal_mode': 'region', 'model': 'espnetv2_s0.5_512x256', 'region_tile_area': 0.3,
                  'two_sided': True, 'two_sided_max_wait_s': 0.0, 'flow_timeout': 5.0, 'refine_max_lag': 0.0})
    node.two_pub = two = Rec()
    try:
        T = [10**10 + i * 33_000_000 for i in range(4)]
        _first_frame(node, T[0], W, H, _keyframe)
        for t in T[1:3]:
            _decision(node, t)
            node.on_image(_img(W, H, t))
            node.on_flow(_flow(W, H, t))
        assert node.prop.stats['refined_frames'] == 2 and len(node.labels_pub.msgs) == 3
        assert [stamp_to_ns(m.header.stamp) for m in two.msgs] == T[:1]     # the propagated frames wait
        _keyframe(node, T[3], W, H, cls=5)
        node.on_image(_img(W, H, T[3]))
        node.on_flow(_flow(W, H, T[3]))
        assert [stamp_to_ns(m.header.stamp) for m in two.msgs] == T
        assert node.counts['two_sided_fused'] == 2
    finally:
        _close(node)
    _assert_configure_fails(PropagationNode, {'temporal_mode': 'grfp', 'two_sided': True},
                            'two_sided:=true combines with temporal_mode warp / region / region-ctx only, not grfp')


def test_propagation_node_two_sided_topic(ros_domain):
    """two_sided:=true: every camera frame reaches /semantic/labels_two_sided once, in stamp order, on its
    own header. A late keyframe result fuses the frames before it; a flow stepped without its image
    breaks the backward chain; what is held goes out forward-only on deactivation."""
    from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
    W, H = 64, 48
    # no time bound: a slow test machine must not release a held frame early
    node = _prop({'two_sided': True, 'two_sided_max_delay': 10, 'two_sided_max_wait_s': 0.0, 'flow_timeout': 5.0})
    node.two_pub = two = Rec()
    try:
        T = [10**10 + i * 33_000_000 for i in range(12)]
        out = lambda: [stamp_to_ns(m.header.stamp) for m in two.msgs]  # noqa: E731
        major = lambda m: int(np.bincount(image_to_ndarray(m).ravel()).argmax())  # noqa: E731

        _first_frame(node, T[0], W, H, keyframe=lambda n, ns, w, h: _keyframe(n, ns, w, h, cls=3))
        assert out() == [T[0]] and major(two.msgs[0]) == 3          # a keyframe is final at once
        for i in (1, 2, 3):      # frame 3 is a keyframe whose result comes after the frame
            _decision(node, T[i], kf=i == 3)
            node.on_image(_img(W, H, T[i]))
            node.on_flow(_flow(W, H, T[i]))
        assert out() == [T[0]] and len(node.labels_pub.msgs) == 4   # causal labels out, two-sided held
        _keyframe(node, T[3], W, H, cls=5)                           # the late result
        assert out() == T[:4]
        assert [major(m) for m in two.msgs] == [3, 3, 5, 5]          # frame 1 nearer keyframe 0, frame 2 nearer 3
        assert node.counts['two_sided_fused'] == 2

        _decision(node, T[4])
        node.on_image(_img(W, H, T[4]))
        node.on_flow(_flow(W, H, T[4]))
        node.on_flow(_flow(W, H, T[5]))                              # a flow whose image never comes
        _decision(node, T[6])
        node.on_image(_img(W, H, T[6]))
        node.on_flow(_flow(W, H, T[6]))
        node.pump()
        assert node.counts['flows_without_image'] == 1
        _keyframe(node, T[7], W, H, cls=5)
        node.on_image(_img(W, H, T[7]))
        node.on_flow(_flow(W, H, T[7]))
        assert out() == T[:5] + T[6:8]                               # no output for the imageless stamp
        # frame 6 fused with keyframe 7; frame 4 forward-only: the chain back to it crossed frame 5
        assert node.counts['two_sided_fused'] == 3 and node.counts['two_sided_forward_only'] == 1
        assert node.counts['two_sided_keyframes'] == 3
        # frames 1 and 2 were fused with both chains' trust (the node hands the buffer both flow fields);
        # frame 6 without: its forward chain crossed the imageless frame 5
        assert node.two.stats['trusted'] == 2
        assert node.diagnostics()[0][3]['two_sided_trusted'] == 2

        for i in (8, 9):
            _decision(node, T[i])
            node.on_image(_img(W, H, T[i]))
            node.on_flow(_flow(W, H, T[i]))
        assert out() == T[:5] + T[6:8]
        node.trigger_deactivate()                                    # nothing held is lost
        assert out() == T[:5] + T[6:10] and node.counts['two_sided_out'] == 9
        assert all(m.header.frame_id == 'cam' and m.encoding == 'mono8' for m in two.msgs)
        assert all(image_to_ndarray(m).shape == (H, W) for m in two.msgs)
    finally:
        _close(node)


def test_nodes_say_why_no_camera_frame_can_arrive(ros_domain):
    """A camera the nodes cannot hear gave no labels and only a line in the log at discovery (or nothing):
    no publisher on the topic, a best-effort camera under input_qos:=reliable, a compressed camera remapped
    onto the topic, a matching camera that sends nothing (paused, or large best-effort images lost on the
    network). Each node now names the cause on /diagnostics (WARN, ``camera_problem``) for as long as it
    lasts, and clears it once a matching camera's frames come."""
    from sensor_msgs.msg import CompressedImage, Image
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.common import reliable_qos, sensor_qos
    from vidseg_ros.ros.flow_node import FlowNode
    from vidseg_ros.ros.testing import Probe
    node = _node(FlowNode, {'input_qos': 'reliable', 'diagnostics_period': 0.0})
    probe = other = None
    try:
        assert node.trigger_configure().name == 'SUCCESS'
        node.trigger_activate()
        node._diag_pub = Rec()

        def diag():
            node._publish_diagnostics()
            st = node._diag_pub.msgs[-1].status[0]
            vals = {kv.key: kv.value for kv in st.values}
            return int.from_bytes(st.level, 'little'), st.message, vals['camera_problem']

        def problem_becomes(pred, timeout=15.0):   # the nodes learn of publishers by discovery
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if pred(node.camera_problem()):
                    return True
                time.sleep(0.1)
            return False
        assert node.camera_problem() is None     # just activated: the camera may still be starting
        assert 'no publisher on the camera topic /camera/image_raw' in \
            node.camera_problem(now=time.monotonic() + node.CAMERA_SILENT_S + 1)
        probe = Probe('camera_best_effort')
        best_effort = probe.publisher(Image, graph.CAMERA_TOPIC, sensor_qos(5))
        assert problem_becomes(lambda p: p and 'cannot match' in p), node.camera_problem()
        level, msg, val = diag()
        assert level == 1 and msg.startswith('the publisher(s) of the camera topic /camera/image_raw offer QoS') \
            and 'Best effort publisher and reliable subscription' in msg and 'input_qos:=sensor_data' in msg, msg
        assert val == msg
        probe.node.destroy_publisher(best_effort)
        other = Probe('camera_compressed')
        other.publisher(CompressedImage, graph.CAMERA_TOPIC)
        assert problem_becomes(lambda p: p and 'published as sensor_msgs/msg/CompressedImage' in p), \
            node.camera_problem()
        assert 'Compressed cameras' in node.camera_problem()
        probe.publisher(Image, graph.CAMERA_TOPIC, reliable_qos(5))    # a camera this node can hear
        assert problem_becomes(lambda p: p is None or p.startswith('1 publisher(s) on the camera topic')), \
            node.camera_problem()
        # ... and a frame from it (the subscription's callback, as the executor would call it)
        from rclpy.serialization import serialize_message
        node._camera.callback(serialize_message(_img(64, 48, 10**10)))
        assert node.camera_problem() is None and diag() == (0, 'running', '')
        # matched but silent (a paused camera, or large best-effort images lost on the network)
        silent = node.camera_problem(now=time.monotonic() + node.CAMERA_SILENT_S + 1)
        assert silent.startswith("1 publisher(s) on the camera topic /camera/image_raw match this node's "
                                 'subscription, but no message came for 6 s') and 'LARGE_DATA' in silent, silent
    finally:
        for p in (probe, other):
            if p is not None:
                p.close()
        _close(node)


def test_propagation_node_names_subscribers_it_cannot_serve(ros_domain):
    """A robot-stack subscriber that asks /semantic/labels for transient-local durability (the labels are
    volatile) is never matched and gets nothing, silently on both sides. The node now names it on
    /diagnostics (WARN, ``subscriber_problems``); matching subscribers (volatile, or transient local on the
    latched /semantic/classes) are not named, and the warning goes once the subscriber does."""
    from rclpy.qos import DurabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.common import reliable_qos
    from vidseg_ros.ros.testing import Probe
    node = _prop({})
    probe = None
    try:
        node._diag_pub = Rec()
        latched = reliable_qos(1)
        latched.durability = DurabilityPolicy.TRANSIENT_LOCAL
        probe = Probe('robot_stack')
        probe.node.create_subscription(Image, graph.LABELS_COLOR_TOPIC, lambda m: None, reliable_qos(5))
        probe.node.create_subscription(String, graph.CLASSES_TOPIC, lambda m: None, latched)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not node.get_subscriptions_info_by_topic(graph.CLASSES_TOPIC):
            time.sleep(0.1)
        assert node.subscriber_problems() == []
        bad = probe.node.create_subscription(Image, graph.LABELS_TOPIC, lambda m: None, latched)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not node.subscriber_problems():
            time.sleep(0.1)
        (problem,) = node.subscriber_problems()
        assert 'on /semantic/labels (Volatile publisher and transient local subscription)' in problem, problem
        node._publish_diagnostics()
        st = node._diag_pub.msgs[-1].status[0]
        vals = {kv.key: kv.value for kv in st.values}
        assert int.from_bytes(st.level, 'little') == 1 and vals['subscriber_problems'] == problem
        assert '1 subscriber(s) ask for QoS this node does not offer and get nothing' in st.message, st.message
        probe.node.destroy_subscription(bad)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and node.subscriber_problems():
            time.sleep(0.1)
        assert node.subscriber_problems() == []
    finally:
        if probe is not None:
            probe.close()
        _close(node)


def test_frames_of_several_cameras_on_one_topic(ros_domain):
    """Two cameras remapped onto one camera topic (or a stereo driver publishing both there): the flow
    between a left and a right frame means nothing, yet it was computed and the labels carried across.
    Now the flow node restarts its chain where the frame_id changes (``frame_id_changes``), the keyframe
    node forces a keyframe there (``forced_frame_id_change``), and frames that keep switching make every
    node name the cause (``camera_problem``: one graph per camera). One change of frame_id (a driver
    restarted with a new name) restarts once and does not warn."""
    from std_msgs.msg import Header
    from vidseg_ros.ros.flow_node import FlowNode
    from vidseg_ros.ros.keyframe_node import KeyframeNode
    flow = _node(FlowNode, {'input_qos': 'reliable', 'diagnostics_period': 0.0})
    kf = _node(KeyframeNode, {'warmup': False, 'num_threads': 1, 'schedule': 'fixed:100',
                              'input_qos': 'reliable', 'diagnostics_period': 0.0})
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 255, (48, 80, 3)).astype(np.uint8)

    def frame(i, cam):
        hdr = Header(frame_id=cam, stamp=ns_to_stamp(10**10 + i * 33_000_000))
        return ndarray_to_image(np.ascontiguousarray(np.roll(scene, i, axis=1)[:, :64]), 'rgb8', hdr)
    try:
        for n in (flow, kf):
            assert n.trigger_configure().name == 'SUCCESS'
        flow.flow_pub = Rec()
        for a in ('labels_pub', 'probs_pub', 'decision_pub', 'info_pub'):
            setattr(kf, a, Rec())
        flow.trigger_activate()
        kf.trigger_activate()
        cams = ['left'] * 4 + ['left_new'] * 4              # one change: a restart, no warning
        for i, cam in enumerate(cams):
            flow.on_image(frame(i, cam))
            kf._process((i, frame(i, cam)))
        widths = [m.width for m in flow.flow_pub.msgs]
        assert widths[0] == 0 and widths[4] == 0 and all(w > 0 for k, w in enumerate(widths) if k not in (0, 4))
        assert flow.counts['frame_id_changes'] == 1 and flow.camera_problem() is None
        dec = [json.loads(m.data)['keyframe'] for m in kf.decision_pub.msgs]
        assert dec == [True, False, False, False, True, False, False, False]
        assert kf.counts['forced_frame_id_change'] == 1
        n0 = len(flow.flow_pub.msgs)
        for i in range(8, 14):                                # left and right interleaved
            cam = ('left', 'right')[i % 2]
            flow.on_image(frame(i, cam))
            kf.on_image(frame(i, cam))
        assert all(m.width == 0 for m in flow.flow_pub.msgs[n0:])    # no flow across cameras
        assert flow.counts['frame_id_changes'] == 7
        for n in (flow, kf):
            problem = n.camera_problem()
            assert problem and "carries the frames of several cameras (frame_id 'left', " in problem \
                and "'right': " in problem and 'one graph per camera' in problem, problem
    finally:
        _close(flow)
        _close(kf)
