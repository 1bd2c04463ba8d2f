"""Faults in the running graph (vidseg_graph runner: 3 lifecycle nodes + manager, separate processes).

While a 10 Hz camera stream runs, with a subscriber of /semantic/labels that is frozen (SIGSTOP) the
whole time:
* the keyframe node hangs (SIGSTOP): labels keep coming, marked degraded (keyframe_node_silent /
  keyframe_overdue) with confidence decaying with the distance from the last keyframe; the manager
  notices (no get_state answer), kills it by pid after ``restart_after``, the runner respawns it, the
  manager re-activates it and keyframes resume;
* the flow node dies (SIGKILL): labels keep coming (held, degraded) until it is back;
* every camera frame sent has exactly one /semantic/status message and, when published, one labels
  message (none silently missing); the frozen subscriber never blocks the pipeline.
Recovery times are printed (RELIABILITY.md quotes them).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip('rclpy')

from vidseg_ros.ros import graph  # noqa: E402
from vidseg_ros.ros.conversions import ndarray_to_image, ns_to_stamp, stamp_to_ns  # noqa: E402
from vidseg_ros.ros.propagation_node import STATUS_TOPIC  # noqa: E402
from vidseg_ros.ros.soak import _pids, panning_frames  # noqa: E402
from vidseg_ros.ros.testing import Probe, node_env, start_process, stop_processes  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(300)]

FROZEN_SUB = r'''
import time, rclpy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vidseg_ros.ros.common import reliable_qos
rclpy.init()
n = rclpy.create_node('frozen_subscriber')
n.create_subscription(Image, '/semantic/labels', lambda m: None, reliable_qos(1))
n.create_subscription(String, '/semantic/status', lambda m: None, reliable_qos(1))
print('ready', flush=True)
rclpy.spin(n)
'''


def test_graph_survives_hung_keyframe_node_and_dead_flow_node(ros_domain, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    logs = tmp_path / 'nodes'
    runner_log = tmp_path / 'runner.log'
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', 'default', '--schedule', 'fixed:3',
           '--log-dir', str(logs), '--stop-timeout', '10',
           '--param', 'keyframe_node:num_threads=1',
           '--param', 'propagation_node:source_timeout=1.0', '--param', 'propagation_node:flow_timeout=0.3',
           '--param', 'lifecycle_manager:health_period=0.3', '--param', 'lifecycle_manager:health_timeout=1.0',
           '--param', 'lifecycle_manager:restart_after=1.0',
           # every frame must be accounted for below: a deep (still bounded) camera queue so that CPU
           # contention on the shared test machine does not drop frames before the node sees them
           '--param', 'propagation_node:queue_depth=100']
    for n in ('flow_node', 'keyframe_node', 'propagation_node'):
        cmd += ['--param', f'{n}:input_qos=reliable']
    runner = start_process(cmd, str(runner_log))
    frozen = subprocess.Popen([sys.executable, '-c', FROZEN_SUB], env=node_env(), stdout=subprocess.PIPE,
                              start_new_session=True)
    probe = Probe()
    stop = threading.Event()
    sent = []

    def logs_text():
        out = [runner_log.read_text(errors='replace')]
        for f in sorted(logs.glob('*.log')) if logs.is_dir() else []:
            out.append(f'--- {f.name}\n' + f.read_text(errors='replace')[-2000:])
        return '\n'.join(out)

    try:
        probe.record(String, STATUS_TOPIC, qos=None)
        probe.record(Image, graph.LABELS_TOPIC)
        probe.record(Image, graph.KEYFRAME_LABELS_TOPIC)
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC)
        cam = probe.publisher(Image, graph.CAMERA_TOPIC)

        def lifecycle(name):
            for _, arr in reversed(probe.messages[graph.DIAGNOSTICS_TOPIC][-12:]):
                for s in arr.status:
                    if s.name == f'vidseg: lifecycle/{name}':
                        return {kv.key: kv.value for kv in s.values}
            return {}

        assert probe.wait_for(lambda: all(lifecycle(n).get('state') == 'active' for n in
                                          ('flow_node', 'keyframe_node', 'propagation_node')), 150), logs_text()
        assert frozen.stdout.readline().strip() == b'ready'
        assert probe.wait_subscribers(cam, 3)
        # the frozen subscriber is matched to the labels publisher, then stopped for the whole test
        deadline = time.monotonic() + 20
        while probe.node.count_subscribers(graph.LABELS_TOPIC) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(frozen.pid, signal.SIGSTOP)

        make = panning_frames((512, 256))

        def stream():
            i = 0
            t0 = time.monotonic()
            while not stop.is_set():
                ns = 2 * 10**18 + i * 100_000_000
                cam.publish(ndarray_to_image(make(i), 'rgb8', Header(frame_id='cam', stamp=ns_to_stamp(ns))))
                sent.append((ns, time.monotonic()))
                i += 1
                time.sleep(max(0.0, t0 + i * 0.1 - time.monotonic()))
        th = threading.Thread(target=stream, daemon=True)
        th.start()

        def statuses(since=0.0):
            with probe.cv:
                msgs = list(probe.messages[STATUS_TOPIC])
            return [(t, json.loads(m.data)) for t, m in msgs if t >= since]

        def keyframes_after(t):
            with probe.cv:
                return [x for x, _ in probe.messages[graph.KEYFRAME_LABELS_TOPIC] if x > t]

        # healthy: keyframes arrive, output not degraded
        assert probe.wait_for(lambda: any(not s['degraded'] for _, s in statuses()), 60), logs_text()
        time.sleep(1.0)

        # ---- the keyframe node hangs
        kf_pid = _pids(runner_log.read_text())['keyframe_node']
        t_hang = time.monotonic()
        os.kill(kf_pid, signal.SIGSTOP)
        assert probe.wait_for(lambda: keyframes_after(t_hang + 0.5), 90), logs_text()
        t_kf_back = keyframes_after(t_hang + 0.5)[0]
        assert 'keyframe_node exited with -9' in runner_log.read_text()
        during = [s for t, s in statuses(t_hang + 0.5) if t < t_kf_back]
        assert len(during) >= 10  # labels kept coming while the keyframe node was hung
        assert all(s['published'] for s in during)
        silent = [s for s in during if {'keyframe_node_silent', 'keyframe_overdue'} & set(s['reasons'])]
        assert silent and all(s['degraded'] for s in silent)
        # confidence decays with distance from the keyframe in force when the node hung. Judged on the frames
        # that still carry that keyframe: under load, the status of a frame that already got the respawned
        # node's first keyframe can reach the probe before that keyframe's labels message does (session 19:
        # distances 5 ... 2 once in a full run, not reproduced alone)
        kf0 = during[0]['keyframe_stamp_ns']
        same = [s for s in during if s['keyframe_stamp_ns'] == kf0]
        d = [s['distance'] for s in same]
        c = [s['confidence_scale'] for s in same]
        assert len(same) >= 5 and d == sorted(d), d
        assert d[-1] > d[0] >= 0 and c[-1] < c[0]
        assert probe.wait_for(lambda: lifecycle('keyframe_node').get('restarts') == '1', 30), logs_text()
        kf_diag = lifecycle('keyframe_node')
        assert kf_diag['kills'] == '1'
        hang_recovery = t_kf_back - t_hang
        # after recovery the output is no longer degraded
        assert probe.wait_for(lambda: any(not s['degraded'] for _, s in statuses(t_kf_back + 0.5)), 30)

        # ---- the flow node dies
        flow_pid = _pids(runner_log.read_text())['flow_node']
        t_kill = time.monotonic()
        os.killpg(flow_pid, signal.SIGKILL)
        assert probe.wait_for(lambda: lifecycle('flow_node').get('restarts') == '1'
                              and lifecycle('flow_node').get('state') == 'active', 90), logs_text()

        def flow_ok_after():
            return [t for t, s in statuses(t_kill + 1.0) if not s['degraded'] and s['distance'] > 0]
        assert probe.wait_for(lambda: flow_ok_after(), 60), logs_text()
        t_flow_back = flow_ok_after()[0]
        during = [s for t, s in statuses(t_kill + 0.5) if t < t_flow_back]
        assert len(during) >= 5 and all(s['published'] for s in during)
        assert any({'flow_node_silent', 'flow_missing', 'flow_chain_restart', 'labels_held'} & set(s['reasons'])
                   for s in during)
        flow_recovery = t_flow_back - t_kill

        # ---- accounting: every frame sent has exactly one status, published ones exactly one labels msg
        stop.set()
        th.join(5)
        n_sent = len(sent)
        assert probe.wait_for(lambda: len(statuses()) >= n_sent, 20), (len(statuses()), n_sent)
        time.sleep(0.5)
        st = [s for _, s in statuses()]
        assert sorted(s['stamp_ns'] for s in st) == [ns for ns, _ in sent]
        lab = [stamp_to_ns(m.header.stamp) for _, m in probe.messages[graph.LABELS_TOPIC]]
        assert sorted(lab) == sorted(s['stamp_ns'] for s in st if s['published'])
        # the frozen subscriber never blocked anything: output kept pace with the input
        lat = {ns: t for ns, t in sent}
        delays = sorted(t - lat[json.loads(m.data)['stamp_ns']] for t, m in probe.messages[STATUS_TOPIC])
        p95 = delays[int(0.95 * len(delays))]
        print(f'\nRELIABILITY faults: frames sent {n_sent}, statuses {len(st)}, labels {len(lab)}, '
              f'degraded {sum(s["degraded"] for s in st)}; keyframe hang -> keyframes back in {hang_recovery:.1f}s; '
              f'flow node kill -> undegraded output in {flow_recovery:.1f}s; status delay p95 {p95 * 1000:.0f} ms, '
              f'max {delays[-1] * 1000:.0f} ms')
        assert frozen.poll() is None  # still frozen, still subscribed
        assert p95 < 2.0
    finally:
        stop.set()
        probe.close()
        try:
            os.killpg(frozen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        frozen.wait(5)
        stop_processes([runner], grace=20)
