"""vidseg_bag_play on a small KITTI-layout drive (rgb8 1242x375 on /kitti/camera_color_left/image_raw,
as kitti2mcap writes it) built here from Cityscapes frames: pace, /clock, remap, and a full replay
through the graph recorded to an mcap bag."""
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('rosbags')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.testing import Probe, read_log, start_process, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.timeout(240)]

KITTI_TOPIC = '/kitti/camera_color_left/image_raw'
T0 = 1_317_000_000_000_000_000  # 2011-09-26, like the KITTI raw drives
PERIOD = 103_600_000            # ~9.65 Hz


def make_kitti_bag(shared, path, n):
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    files = sorted((shared / 'data' / 'cityscapes_seq' / 'seq0001').glob('*_leftImg8bit.jpg'))[:n]
    store = get_typestore(Stores.ROS2_KILTED)
    Image, Header, Time = (store.types[t] for t in ('sensor_msgs/msg/Image', 'std_msgs/msg/Header',
                                                    'builtin_interfaces/msg/Time'))
    frames, stamps = [], []
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(KITTI_TOPIC, 'sensor_msgs/msg/Image', typestore=store)
        for i, f in enumerate(files):
            rgb = cv2.resize(cv2.imread(str(f))[:, :, ::-1], (1242, 375), interpolation=cv2.INTER_AREA)
            ns = T0 + i * PERIOD
            msg = Image(header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id='camera_color_left'),
                        height=375, width=1242, encoding='rgb8', is_bigendian=0, step=1242 * 3,
                        data=np.ascontiguousarray(rgb).reshape(-1))
            w.write(conn, ns, store.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
            frames.append(rgb)
            stamps.append(ns)
    return frames, stamps


@pytest.fixture
def kitti_bag(shared, tmp_path):
    path = tmp_path / 'kitti_drive'
    frames, stamps = make_kitti_bag(shared, path, 6)
    return path, frames, stamps


def test_replay_pace_clock_remap(ros_domain, kitti_bag, tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from vidseg_ros.ros.conversions import image_to_rgb, stamp_to_ns
    path, frames, stamps = kitti_bag
    probe = Probe()
    proc = None
    try:
        probe.record(Image, graph.CAMERA_TOPIC)
        probe.record(Clock, '/clock')
        rate = 1.0
        proc = start_process([sys.executable, '-m', 'vidseg_ros.ros.bag_replay', str(path), '--topic', KITTI_TOPIC,
                              '--remap-to', graph.CAMERA_TOPIC, '--rate', str(rate), '--clock',
                              '--wait-subscribers', '1'], str(tmp_path / 'play.log'))
        assert probe.wait_for(lambda: probe.count(graph.CAMERA_TOPIC) == len(frames), 60), read_log(proc)
        proc.wait(20)
        assert proc.returncode == 0, read_log(proc)
        msgs = probe.messages[graph.CAMERA_TOPIC]
        for (t, m), rgb, ns in zip(msgs, frames, stamps):
            assert stamp_to_ns(m.header.stamp) == ns and m.header.frame_id == 'camera_color_left'
            assert np.array_equal(image_to_rgb(m), rgb)
        span = msgs[-1][0] - msgs[0][0]
        expect = (stamps[-1] - stamps[0]) / 1e9 / rate
        assert 0.6 * expect < span < 1.5 * expect + 0.3, (span, expect)  # loaded 2-core CI: loose
        clocks = [stamp_to_ns(m.clock) for _, m in probe.messages['/clock']]
        assert len(clocks) >= len(frames)
        assert all(b >= a for a, b in zip(clocks, clocks[1:]))
        assert clocks[0] >= stamps[0] and clocks[-1] == stamps[-1]
        assert 'played 6 messages' in read_log(proc)
    finally:
        probe.close()
        stop_processes([proc])


def test_bad_bag_is_a_clear_error(tmp_path, kitti_bag):
    from vidseg_ros.ros import bag_replay
    path, _, _ = kitti_bag
    assert bag_replay.main([str(tmp_path / 'nope')]) == 2
    assert bag_replay.main([str(path), '--topic', '/nope', '--rate', '0']) == 2


def test_wait_linked_without_a_graph_is_a_clear_error(ros_domain, kitti_bag, tmp_path):
    """--wait-linked with no vidseg graph up: exit 2 naming the nodes not heard from, nothing played."""
    path, _, _ = kitti_bag
    proc = start_process([sys.executable, '-m', 'vidseg_ros.ros.bag_replay', str(path), '--rate', '0',
                          '--wait-linked', '--wait-timeout', '1.5'], str(tmp_path / 'play.log'))
    try:
        assert proc.wait(60) == 2, read_log(proc)
    finally:
        stop_processes([proc])
    log = read_log(proc)
    assert 'error: the vidseg nodes are not linked within 1.5s (flow_node: no diagnostics yet; ' in log, log
    assert 'played' not in log


def make_compressed_bag(path, frames, stamps, topic='/camera/image_raw/compressed', corrupt=()):
    """An mcap bag of sensor_msgs/CompressedImage (JPEG) frames, as robots record cameras; the indices in
    ``corrupt`` carry bytes that are no image. Returns the JPEG bytes written."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    Msg, Header, Time = (store.types[t] for t in ('sensor_msgs/msg/CompressedImage', 'std_msgs/msg/Header',
                                                  'builtin_interfaces/msg/Time'))
    written = []
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(topic, 'sensor_msgs/msg/CompressedImage', typestore=store)
        for i, (rgb, ns) in enumerate(zip(frames, stamps)):
            data = cv2.imencode('.jpg', np.ascontiguousarray(rgb[:, :, ::-1]))[1].reshape(-1)
            if i in corrupt:
                data = np.frombuffer(b'no jpeg here', np.uint8)
            msg = Msg(header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id='camera_color_left'),
                      format='jpeg', data=data)
            w.write(conn, ns, store.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
            written.append(data)
    return written


def test_replay_decompresses_compressed_image_topics(ros_domain, kitti_bag, tmp_path, capsys):
    """A camera recorded as sensor_msgs/CompressedImage: --decompress publishes Images (bgr8, as
    image_transport decodes them) on the camera topic with the recorded headers; an undecodable message is
    skipped, named and counted. Remapping it without --decompress, or a bag with only compressed topics
    and no --topic, is a clear error that names --decompress."""
    import cv2
    from sensor_msgs.msg import Image
    from vidseg_ros.ros import bag_replay
    from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
    _, frames, stamps = kitti_bag
    path = tmp_path / 'compressed'
    jpegs = make_compressed_bag(path, frames, stamps, corrupt=(2,))
    probe = Probe()
    proc = None
    try:
        probe.record(Image, graph.CAMERA_TOPIC)
        proc = start_process([sys.executable, '-m', 'vidseg_ros.ros.bag_replay', str(path), '--decompress',
                              '--remap-to', graph.CAMERA_TOPIC, '--rate', '0', '--wait-subscribers', '1'],
                             str(tmp_path / 'play.log'))
        assert probe.wait_for(lambda: probe.count(graph.CAMERA_TOPIC) == len(frames) - 1, 60), read_log(proc)
        proc.wait(20)
        log = read_log(proc)
        assert proc.returncode == 0, log
        assert 'played 5 messages; 1 undecodable CompressedImage message(s) not played' in log, log
        assert f'warning: /camera/image_raw/compressed message at {stamps[2]} not played: cannot decode' in log
        msgs = [m for _, m in probe.messages[graph.CAMERA_TOPIC]]
        for m, i in zip(msgs, (0, 1, 3, 4, 5)):
            assert m.encoding == 'bgr8' and stamp_to_ns(m.header.stamp) == stamps[i]
            assert m.header.frame_id == 'camera_color_left'
            assert np.array_equal(image_to_ndarray(m), cv2.imdecode(jpegs[i], cv2.IMREAD_UNCHANGED))
    finally:
        probe.close()
        stop_processes([proc])
    capsys.readouterr()
    assert bag_replay.main([str(path), '--remap-to', graph.CAMERA_TOPIC, '--topic', '/camera/image_raw/compressed',
                            '--rate', '0']) == 2
    err = capsys.readouterr().err
    assert 'is sensor_msgs/msg/CompressedImage; the vidseg camera topic takes sensor_msgs/msg/Image: add ' \
           '--decompress' in err, err
    assert bag_replay.main([str(path), '--rate', '0']) == 2
    err = capsys.readouterr().err
    assert "CompressedImage topics ['/camera/image_raw/compressed']: play one with --decompress" in err, err


@pytest.mark.slow
@pytest.mark.parametrize('namespace', ['', 'front'])
def test_kitti_replay_through_graph_recorded(ros_domain, kitti_bag, tmp_path, namespace):
    """Replay (sim time, paced) through the graph on the KITTI topic; the recorded bag has one label
    image per input frame with its stamp and the input size. Also with the graph in a namespace (one graph
    per camera): the player waits for that graph's nodes, paces on and records its topics."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore
    path, frames, stamps = kitti_bag
    out = tmp_path / 'labels_bag'
    ns = f'/{namespace}' if namespace else ''
    labels_topic, classes_topic = ns + graph.LABELS_TOPIC, ns + graph.CLASSES_TOPIC
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', 'espnetv2_s0.5_512x256', '--schedule', 'fixed:3',
           '--camera-topic', KITTI_TOPIC, '--use-sim-time', '--log-dir', str(tmp_path / 'logs'),
           '--namespace', namespace,
           '--param', 'keyframe_node:backend=torch', '--param', 'keyframe_node:num_threads=1',
           '--param', 'propagation_node:keyframe_wait=30.0']  # deterministic: frames wait for keyframes
    for n in ('flow_node', 'keyframe_node', 'propagation_node'):
        cmd += ['--param', f'{n}:input_qos=reliable']
    graph_proc = start_process(cmd, str(tmp_path / 'runner.log'))
    play = None
    try:
        probe = Probe()
        try:  # wait until the graph is active
            deadline = time.monotonic() + 120
            while not all(probe.get_state(ns.lstrip('/') + ('/' if ns else '') + n, 2.0) == 'active'
                          for n in ('flow_node', 'keyframe_node', 'propagation_node')):
                assert time.monotonic() < deadline and graph_proc.poll() is None, read_log(graph_proc)
                time.sleep(0.3)
        finally:
            probe.close()
        play = start_process([sys.executable, '-m', 'vidseg_ros.ros.bag_replay', str(path), '--rate', '0',
                              '--clock', '--wait-subscribers', '3', '--wait-linked', '--namespace', namespace,
                              '--paced', labels_topic, '--record', str(out), '--record-topics', labels_topic,
                              classes_topic, '--tail', '0.5'], str(tmp_path / 'play.log'))
        play.wait(150)
        logs = ''.join(f.read_text()[-2000:] for f in sorted((tmp_path / 'logs').glob('*.log')))
        assert play.returncode == 0, read_log(play) + read_log(graph_proc) + logs
    finally:
        stop_processes([play, graph_proc], grace=15)
    with AnyReader([out], default_typestore=get_typestore(Stores.ROS2_KILTED)) as r:
        conns = [c for c in r.connections if c.topic == labels_topic]
        labels = [r.deserialize(raw, c.msgtype) for c, _, raw in r.messages(connections=conns)]
        classes = [c for c in r.connections if c.topic == classes_topic]
        assert classes and classes[0].msgcount == 1
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in labels] == stamps
    for m in labels:
        assert (m.width, m.height, m.encoding, m.header.frame_id) == (1242, 375, 'mono8', 'camera_color_left')
        lab = np.asarray(m.data, np.uint8).reshape(375, 1242)
        assert (lab < 19).mean() > 0.95


def test_vidseg_run_reads_a_compressed_camera_bag(kitti_bag, tmp_path, capsys):
    """`vidseg run BAG` on a bag with only a CompressedImage camera: it decodes the JPEGs (RGB like
    the original frames up to JPEG loss), labels every decodable frame and lists the corrupt one."""
    import json
    from vidseg_ros.cli import main as cli_main
    from vidseg_ros.core.io import open_source
    _, frames, stamps = kitti_bag
    path = tmp_path / 'compressed'
    make_compressed_bag(path, frames, stamps, corrupt=(2,))
    src = open_source(str(path), skip_bad=True)
    got = list(src)
    assert [f.error is None for f in got] == [True, True, False, True, True, True]
    assert np.abs(got[0].rgb.astype(int) - frames[0]).mean() < 6          # JPEG, RGB order kept
    assert got[1].stamp_s == pytest.approx(stamps[1] * 1e-9)
    out = tmp_path / 'out'
    assert cli_main(['run', str(path), '--out', str(out), '--no-overlay', '-q']) == 0
    err = capsys.readouterr().err
    assert 'warning: frame 000002 skipped: cannot decode CompressedImage #2 (jpeg)' in err, err
    assert sorted(p.stem for p in (out / 'labels').glob('*.png')) == ['000000', '000001', '000003', '000004',
                                                                      '000005']
    s = json.loads((out / 'summary.json').read_text())
    assert s['frames'] == 5 and s['source']['kind'] == 'rosbag' and s['skipped_frames'][0]['index'] == 2
