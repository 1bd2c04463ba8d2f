"""The whole graph (vidseg_graph runner: 3 lifecycle nodes + manager) in separate processes.

One isolated ROS domain, bounded time, processes always killed. Checks, on real Cityscapes frames with
the small ESPNetv2 s0.5 512x256 model:
* lifecycle transitions in order (configure all in order, activate all in order; on SIGINT deactivate
  in reverse order), observed on /<node>/transition_event;
* every input frame yields exactly one /semantic/labels message with the identical header;
* paced input + fixed schedule at D=2: the graph's labels equal the offline VideoSegmenter's pixel for pixel;
* a schedule switch through the manager changes the measured keyframe ratio; an invalid one is refused;
* a killed node is respawned by the runner and re-activated by the manager.
"""
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import image_to_ndarray, ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.testing import Probe, start_process, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = 'espnetv2_s0.5_512x256'
SCALE = 2  # 1024x512 input, 512x256 working resolution (EVS D=2)
NODES = [s.name for s in graph.MANAGED_NODES]


def _frames(shared, n):
    import cv2
    d = shared / 'data' / 'cityscapes_seq' / 'seq0000'
    files = sorted(d.glob('*_leftImg8bit.jpg'))[:n]
    if len(files) < n:
        pytest.skip(f'need {n} frames in {d}')
    return [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (1024, 512), interpolation=cv2.INTER_AREA) for f in files]


def _offline(frames, switch_at):
    """Core VideoSegmenter labels: fixed:3, then fixed:1 from frame ``switch_at``."""
    from vidseg_ros.core.models import load_model
    from vidseg_ros.core.pipeline import VideoSegmenter
    from vidseg_ros.core.schedule import OperatingPoint
    seg = VideoSegmenter(load_model(MODEL, backend='torch'), OperatingPoint('t', SCALE, 3, True, False))
    out = []
    for i, f in enumerate(frames):
        if i == switch_at:
            seg.set_schedule('fixed:1')
        out.append(seg.process(f).labels.copy())
    return out


def _events(probe, name):
    """(start, goal, publish time) of a node's transition events (source timestamps: the order they
    happened, independent of delivery delays)."""
    key = f'ev/{name}'
    return [(m.start_state.label, m.goal_state.label, ts)
            for (_, m), ts in zip(probe.messages[key], probe.source_stamps[key])]


def test_graph_end_to_end(ros_domain, shared, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import TransitionEvent
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from std_srvs.srv import Trigger

    n_a, n_b = 9, 5
    frames = _frames(shared, n_a + n_b + 2)
    logs = tmp_path / 'logs'
    reliable = [f'{n}:input_qos=reliable' for n in NODES] + [f'{n}:scale={SCALE}' for n in NODES]
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', MODEL, '--schedule', 'fixed:3',
           '--log-dir', str(logs), '--stop-timeout', '20',
           '--param', 'keyframe_node:backend=torch', '--param', 'keyframe_node:num_threads=1',
           '--param', 'propagation_node:keyframe_wait=30.0', '--param', 'propagation_node:flow_timeout=30.0',
           '--param', 'lifecycle_manager:autostart=false', '--param', 'lifecycle_manager:health_period=0.5',
           '--param', 'lifecycle_manager:health_timeout=2.0',
           # the SIGSTOP case below checks "reported, then recovers when it answers again"; keep the
           # manager's kill-after-restart_after (test_reliability_faults.py) out of this scenario
           '--param', 'lifecycle_manager:restart_after=0.0']
    for r in reliable:
        cmd += ['--param', r]
    runner = start_process(cmd, str(tmp_path / 'runner.log'))
    probe = Probe()

    def logs_text():
        out = [(tmp_path / 'runner.log').read_text(errors='replace')]
        for f in sorted(logs.glob('*.log')) if logs.is_dir() else []:
            out.append(f'--- {f.name}\n' + f.read_text(errors='replace')[-3000:])
        return '\n'.join(out)

    try:
        for n in NODES:
            probe.record(TransitionEvent, f'/{n}/transition_event', key=f'ev/{n}')
        probe.record(Image, graph.LABELS_TOPIC)
        probe.record(Image, graph.KEYFRAME_LABELS_TOPIC)
        probe.record(String, graph.SCHEDULE_STATUS_TOPIC)
        probe.record(String, graph.CLASSES_TOPIC)
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)
        cmd_pub = probe.publisher(String, graph.SCHEDULE_CMD_TOPIC)
        # the transition_event publishers must be matched before the manager starts the graph
        deadline = time.monotonic() + 90
        while not all(probe.node.count_publishers(f'/{n}/transition_event') for n in NODES):
            assert time.monotonic() < deadline, logs_text()
            time.sleep(0.1)
        time.sleep(0.5)
        res = probe.call(Trigger, '/lifecycle_manager/startup', Trigger.Request(), timeout=120)
        assert res is not None and res.success, logs_text()
        assert probe.wait_for(lambda: all(len(_events(probe, n)) >= 4 for n in NODES), 10), logs_text()
        seq = sorted((t, n, s, g) for n in NODES for s, g, t in _events(probe, n))
        assert [(n, g) for _, n, s, g in seq] == (
            [(n, g) for n in NODES for g in ('configuring', 'inactive')]
            + [(n, g) for n in NODES for g in ('activating', 'active')]), seq
        assert probe.wait_subscribers(cam, 3)
        linked, missing = probe.wait_linked()
        assert linked, missing + '\n' + logs_text()

        sent = []

        def send(i, frame_id='camera_left'):
            hdr = Header(frame_id=frame_id, stamp=ns_to_stamp(1_600_000_000_000_000_000 + i * 58_823_529))
            sent.append(hdr)
            cam.publish(ndarray_to_image(frames[i], 'rgb8', hdr))
            assert probe.wait_for(lambda: probe.count(graph.LABELS_TOPIC) == len(sent), 60), logs_text()

        # phase A: fixed:3, paced
        for i in range(n_a):
            send(i)
        kf_a = probe.count(graph.KEYFRAME_LABELS_TOPIC)
        assert kf_a == 3  # frames 0, 3, 6
        # an invalid schedule is refused with the reason; a valid one is applied
        cmd_pub.publish(String(data='fixed:0'))
        assert probe.wait_for(lambda: probe.count(graph.SCHEDULE_STATUS_TOPIC) >= 1, 20), logs_text()
        import json
        st = json.loads(probe.messages[graph.SCHEDULE_STATUS_TOPIC][-1][1].data)
        assert st['ok'] is False and 'interval' in st['reason']
        cmd_pub.publish(String(data='fixed:1'))
        assert probe.wait_for(lambda: probe.count(graph.SCHEDULE_STATUS_TOPIC) >= 2, 20), logs_text()
        st = json.loads(probe.messages[graph.SCHEDULE_STATUS_TOPIC][-1][1].data)
        assert st['ok'] is True and st['schedule'] == 'fixed:1', st
        # phase B: fixed:1 -> every frame is a keyframe
        for i in range(n_a, n_a + n_b):
            send(i)
        kf_b = probe.count(graph.KEYFRAME_LABELS_TOPIC) - kf_a
        assert kf_b == n_b and kf_a / n_a < 0.5 < kf_b / n_b

        # the same through the manager's parameter (ros2 param set /lifecycle_manager schedule ...)
        ok, reason = probe.set_param('lifecycle_manager', 'schedule', 'adaptive:min_interval=5,max_interval=2')
        assert not ok and 'min_interval' in reason
        n_status = probe.count(graph.SCHEDULE_STATUS_TOPIC)
        assert probe.set_param('lifecycle_manager', 'schedule', 'fixed:2')[0]
        assert probe.wait_for(lambda: probe.count(graph.SCHEDULE_STATUS_TOPIC) > n_status, 20)
        st = json.loads(probe.messages[graph.SCHEDULE_STATUS_TOPIC][-1][1].data)
        assert st['ok'] is True and st['schedule'] == 'fixed:2', st

        labels = [m for _, m in probe.messages[graph.LABELS_TOPIC]]
        assert len(labels) == len(sent)
        for hdr, m in zip(sent, labels):
            assert m.header.frame_id == hdr.frame_id and stamp_to_ns(m.header.stamp) == stamp_to_ns(hdr.stamp)
            assert (m.width, m.height, m.encoding) == (1024, 512, 'mono8')
        classes = json.loads(probe.messages[graph.CLASSES_TOPIC][-1][1].data)
        assert classes['names'][0] == 'road' and len(classes['colors']) == 19

        offline = _offline(frames[:len(sent)], n_a)
        for i, (m, ref) in enumerate(zip(labels, offline)):
            got = image_to_ndarray(m)
            assert np.array_equal(got, ref), f'frame {i}: {np.mean(got != ref):.4%} pixels differ'
        assert len(np.unique(offline[n_a - 1])) > 3  # real segmentation, not a constant map

        def flow_diag(pred):
            def check():
                arrs = probe.messages[graph.DIAGNOSTICS_TOPIC]
                for _, arr in arrs[-3:]:
                    for s in arr.status:
                        if s.name == 'vidseg: lifecycle/flow_node' and pred(s, {kv.key: kv.value for kv in s.values}):
                            return True
                return False
            return check

        # a node that stops answering is reported on /diagnostics, and recovers when it answers again
        pid = int(re.search(r'started flow_node \(pid (\d+)\)', (tmp_path / 'runner.log').read_text()).group(1))
        os.kill(pid, signal.SIGSTOP)
        try:
            assert probe.wait_for(flow_diag(lambda s, v: s.message == 'not responding' and s.level == b'\x02'), 15)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert probe.wait_for(flow_diag(lambda s, v: s.message == 'active' and s.level == b'\x00'), 15)
        # a killed node is respawned by the runner and re-activated by the manager
        os.killpg(pid, signal.SIGKILL)
        assert probe.wait_for(flow_diag(lambda s, v: v['restarts'] == '1' and v['state'] == 'active'), 90), \
            logs_text()
        # asked again every 3 s: a reply lost in the client/service discovery race is not the node's failure
        # (session 14: the manager had re-activated the respawned node, this one-shot call got no answer)
        state = probe.get_state('flow_node', timeout=30)
        assert state == 'active', (state, probe.last_call_failure, probe.lost_responses)
        send(n_a + n_b)
        send(n_a + n_b + 1)

        diag_names = {s.name for _, a in probe.messages[graph.DIAGNOSTICS_TOPIC] for s in a.status}
        assert {'vidseg: propagation_node', 'vidseg: keyframe_node', 'vidseg: flow_node'} <= diag_names

        # clean stop: the manager deactivates the nodes in reverse order
        n_ev = {n: len(_events(probe, n)) for n in NODES}
        os.killpg(runner.pid, signal.SIGINT)
        runner.wait(60)
        assert runner.returncode == 0, logs_text()
        time.sleep(0.2)
        seq = sorted((t, n, g) for n in NODES for _, g, t in _events(probe, n)[n_ev[n]:])
        deact = [n for _, n, g in seq if g == 'deactivating']
        assert deact == NODES[::-1], seq
    finally:
        probe.close()
        stop_processes([runner], grace=20)


def test_two_graphs_in_namespaces_keep_to_their_own_camera(ros_domain, shared, tmp_path):
    """One graph per camera: two runners with --namespace left / right in one ROS domain. Each graph's
    topics are under its namespace (the internal ones too, so the flows and keyframes of one camera never
    reach the other's propagation node), each manager brings up and switches its own nodes, and
    /diagnostics (global) names every node with its namespace. Before, every topic was absolute: two
    graphs crossed their flows and keyframe results, and a namespace given to the launch file was ignored."""
    import json
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    frames = [__import__('cv2').resize(f, (512, 256)) for f in _frames(shared, 4)]
    procs, probe = [], Probe()
    schedules = {'left': 'fixed:2', 'right': 'fixed:1'}
    try:
        for ns, sched in schedules.items():
            cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--namespace', ns, '--model', MODEL,
                   '--schedule', sched, '--log-dir', str(tmp_path / ns), '--stop-timeout', '20',
                   '--param', 'keyframe_node:backend=torch', '--param', 'keyframe_node:num_threads=1',
                   '--param', 'propagation_node:keyframe_wait=30.0',
                   '--param', 'propagation_node:flow_timeout=30.0']
            cmd += [a for n in NODES for a in ('--param', f'{n}:input_qos=reliable')]
            procs.append(start_process(cmd, str(tmp_path / f'runner_{ns}.log')))

        def logs_text():
            return '\n'.join(f'--- {f.name}\n' + f.read_text(errors='replace')[-2000:]
                             for f in sorted(tmp_path.rglob('*.log')))
        cams = {}
        for ns in schedules:
            probe.record(Image, f'/{ns}/semantic/labels', key=f'{ns}/labels')
            probe.record(Image, f'/{ns}/vidseg/keyframe/labels', key=f'{ns}/kf')
            probe.record(String, f'/{ns}/vidseg/schedule_status', key=f'{ns}/sched', qos=latched())
            cams[ns] = probe.publisher(Image, f'/{ns}/camera/image_raw')
        probe.record(Image, graph.LABELS_TOPIC)                  # the root namespace: nothing comes here
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC)
        for ns, cam in cams.items():
            assert probe.wait_subscribers(cam, 3, timeout=120), logs_text()
        linked, missing = probe.wait_linked(timeout=90, nodes=[f'{ns}/{n}' for ns in schedules for n in NODES])
        assert linked, missing + '\n' + logs_text()
        stamps = {'left': [], 'right': []}
        for i, f in enumerate(frames):
            for k, ns in enumerate(schedules):
                hdr = Header(frame_id=f'cam_{ns}', stamp=ns_to_stamp(10**18 + i * 10**8 + k * 10**7))
                stamps[ns].append(stamp_to_ns(hdr.stamp))
                cams[ns].publish(ndarray_to_image(f, 'rgb8', hdr))
                assert probe.wait_for(lambda: probe.count(f'{ns}/labels') == i + 1, 60), logs_text()
        for ns in schedules:
            got = [m for _, m in probe.messages[f'{ns}/labels']]
            assert [stamp_to_ns(m.header.stamp) for m in got] == stamps[ns]
            assert {m.header.frame_id for m in got} == {f'cam_{ns}'}
        assert probe.count('left/kf') == 2 and probe.count('right/kf') == 4    # each manager's schedule
        assert probe.count(graph.LABELS_TOPIC) == 0
        # a schedule switch through one namespace's manager reaches its keyframe node only
        switch = probe.publisher(String, '/left/vidseg/schedule_cmd')
        assert probe.wait_subscribers(switch)
        switch.publish(String(data='fixed:1'))
        assert probe.wait_for(lambda: probe.count('left/sched') >= 1, 30), logs_text()
        assert json.loads(probe.messages['left/sched'][-1][1].data)['ok'] is True
        assert probe.count('right/sched') == 0
        names = {s.name: s for _, a in probe.messages[graph.DIAGNOSTICS_TOPIC] for s in a.status}
        for ns in schedules:
            for n in NODES:
                assert f'vidseg: {ns}/{n}' in names and names[f'vidseg: lifecycle/{ns}/{n}'].message == 'active'
        assert 'vidseg: flow_node' not in names
    finally:
        probe.close()
        stop_processes(procs, grace=20)


def latched():
    from vidseg_ros.ros.common import latched_qos
    return latched_qos()
