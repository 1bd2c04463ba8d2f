"""vidseg_soak: stream N frames at a fixed rate through the whole graph and account for every frame.

Starts ``vidseg_graph`` (3 lifecycle nodes + manager, isolated by the caller's ROS_DOMAIN_ID), publishes a
panning texture (real motion, so flow and warping do real work) at ``--rate`` Hz and ``--size`` on
/camera/image_raw, and records /semantic/labels, /semantic/status and /diagnostics. Reports, as JSON:

* frames sent, received by the propagation node (``frames_in``), labels it published (``frames_out``),
  frames without labels that it counted (bad/duplicate input), the balance ``frames_in - frames_out -
  counted`` (must be 0: no frame silently missing), frames lost before the node (``transport_lost`` =
  sent - frames_in) next to the node's own estimate from stamp gaps, labels received by the soak's
  subscriber (a slow subscriber loses messages rather than blocking the publisher);
* degraded frames by reason, keyframes, frames skipped by the busy keyframe network, flow chain starts;
  the propagation node's flow timeouts, join overflows, late flows and late flows it could still apply;
* resident memory (VmRSS) of each node after the warm-up and at the end, and its peak (VmHWM);
* output latency (publish -> labels received) mean / p99 / max.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time

import numpy as np

from vidseg_ros.core.errors import VidsegError

NODES = ('flow_node', 'keyframe_node', 'propagation_node', 'lifecycle_manager')


def proc_mem(pid: int) -> dict:
    """VmRSS / VmHWM of a process in MiB (empty when it is gone)."""
    out = {}
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(('VmRSS:', 'VmHWM:')):
                    k, v = line.split(':', 1)
                    out[k] = int(v.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def panning_frames(size, seed=0):
    """A function i -> (H, W, 3) uint8 RGB: a window panning 3 px/frame over a smooth random texture."""
    import cv2
    w, h = size
    rng = np.random.default_rng(seed)
    tw = w + 600
    tex = cv2.resize((rng.random((h // 8 + 1, tw // 8 + 1, 3)) * 255).astype(np.uint8), (tw, h),
                     interpolation=cv2.INTER_CUBIC)
    tex = np.ascontiguousarray(tex)

    def frame(i):
        x = (3 * i) % 1200
        x = x if x <= 600 else 1200 - x  # ping-pong: always in range
        return np.ascontiguousarray(tex[:, x:x + w])
    return frame


def _pids(runner_log: str) -> dict:
    """Newest pid per node from the runner's 'started NAME (pid N)' lines."""
    out = {}
    for m in re.finditer(r'started (\w+) \(pid (\d+)\)', runner_log):
        out[m.group(1)] = int(m.group(2))
    return out


def run_soak(frames: int = 2000, rate: float = 30.0, size=(1242, 375), model: str = 'default',
             schedule: str = 'fixed:5', warmup: int = 100, log_dir: str | None = None,
             startup_timeout: float = 180.0, drain_s: float = 10.0, progress: bool = True, scale: int = 1,
             params=()) -> dict:
    """Run the soak; returns the report dict (see module docstring)."""
    import tempfile
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.conversions import ndarray_to_image, ns_to_stamp, stamp_to_ns
    from vidseg_ros.ros.propagation_node import STATUS_TOPIC
    from vidseg_ros.ros.testing import Probe, start_process, stop_processes

    log_dir = log_dir or tempfile.mkdtemp(prefix='vidseg_soak_')
    os.makedirs(log_dir, exist_ok=True)
    runner_log = os.path.join(log_dir, 'runner.log')
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', model, '--schedule', schedule,
           '--log-dir', os.path.join(log_dir, 'nodes'), '--stop-timeout', '10',
           '--param', 'keyframe_node:num_threads=1']
    for n in ('flow_node', 'keyframe_node', 'propagation_node'):
        cmd += ['--param', f'{n}:input_qos=reliable', '--param', f'{n}:scale={int(scale)}']
    for p in params:
        cmd += ['--param', p]
    runner = start_process(cmd, runner_log)
    probe = Probe('vidseg_soak')
    lat = []
    sent_t = {}
    rep = {'frames': frames, 'rate_hz': rate, 'size': list(size), 'model': model, 'schedule': schedule,
           'scale': int(scale), 'params': list(params), 'log_dir': log_dir,
           'loadavg_start': os.getloadavg()[0]}
    try:
        def on_labels(msg):
            t = sent_t.get(stamp_to_ns(msg.header.stamp))
            if t is not None:
                lat.append(time.monotonic() - t)
        probe.node.create_subscription(Image, graph.LABELS_TOPIC, on_labels, _qos(100))
        probe.record(String, STATUS_TOPIC, qos=_qos(200))
        probe.record(DiagnosticArray, graph.DIAGNOSTICS_TOPIC, qos=_qos(100))
        probe.record(Image, graph.KEYFRAME_LABELS_TOPIC, qos=_qos(100))
        cam = probe.publisher(Image, graph.CAMERA_TOPIC, qos=_qos(10))
        deadline = time.monotonic() + startup_timeout
        while not _all_active(probe):
            if time.monotonic() > deadline or runner.poll() is not None:
                raise VidsegError(f'graph did not become active within {startup_timeout}s (logs: {log_dir})')
            time.sleep(0.2)
        if not probe.wait_subscribers(cam, 3, timeout=30):
            raise VidsegError('camera subscribers did not appear')
        make = panning_frames(size)
        t_start = time.monotonic()
        base_ns = 1_700_000_000 * 10**9
        mem_start = {}
        period = 1.0 / rate
        late = 0
        it = range(frames)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc='soak', unit='frame', file=sys.stderr, mininterval=2.0)
        for i in it:
            target = t_start + i * period
            now = time.monotonic()
            if now < target:
                time.sleep(target - now)
            elif now - target > period:
                late += 1
            ns = base_ns + int(i * 1e9 / rate)
            msg = ndarray_to_image(make(i), 'rgb8', Header(frame_id='camera', stamp=ns_to_stamp(ns)))
            sent_t[ns] = time.monotonic()
            cam.publish(msg)
            if i == warmup:
                mem_start = {n: proc_mem(p) for n, p in _pids(_read(runner_log)).items()}
        stream_s = time.monotonic() - t_start
        n_status = lambda: probe.count(STATUS_TOPIC)  # noqa: E731
        probe.wait_for(lambda: n_status() >= frames, drain_s)
        time.sleep(1.5)  # one more diagnostics period
        pids = _pids(_read(runner_log))
        mem_end = {n: proc_mem(p) for n, p in pids.items()}
        statuses = [json.loads(m.data) for _, m in probe.messages[STATUS_TOPIC]]
        diag = _last_diag(probe)
        pn = diag.get('propagation_node', {})
        kn = diag.get('keyframe_node', {})
        fn = diag.get('flow_node', {})
        published = sum(1 for s in statuses if s['published'])
        reasons = collections.Counter(r.split(':')[0] for s in statuses for r in s['reasons'])
        frames_in = int(pn.get('frames_in', -1))
        frames_out = int(pn.get('frames_out', -1))
        counted = int(pn.get('unpublished', 0))
        lat_ms = np.asarray(lat) * 1000 if lat else np.zeros(1)
        rep.update({
            'stream_s': round(stream_s, 2), 'sent_late': late,
            'frames_in': frames_in, 'frames_out': frames_out, 'labels_received': len(lat),
            'status_received': len(statuses), 'status_published': published, 'counted_without_labels': counted,
            'balance_in_minus_out_minus_counted': frames_in - frames_out - counted,
            'subscriber_missed_labels': frames_out - len(lat), 'loadavg_end': os.getloadavg()[0],
            'transport_lost': frames - frames_in,
            'input_gap_frames_counted': int(pn.get('input_gap_frames', 0)),
            'flows_without_image': int(pn.get('flows_without_image', 0)),
            'degraded': sum(1 for s in statuses if s['degraded']), 'degraded_reasons': dict(reasons),
            'keyframes': probe.count(graph.KEYFRAME_LABELS_TOPIC),
            'keyframe_skipped_busy': int(kn.get('skipped_busy', 0)),
            'flow_frames': int(fn.get('frames', 0)), 'flow_chain_starts': int(fn.get('chain_starts', 0)),
            'prop_drops': int(pn.get('drops', 0)), 'prop_flow_timeouts': int(pn.get('flow_timeouts', 0)),
            'prop_dropped_overflow': int(pn.get('dropped_overflow', 0)),
            'prop_late_flows': int(pn.get('late_flows', 0)),
            'prop_late_flows_applied': int(pn.get('late_flows_applied', 0)),
            'latency_ms': {'mean': round(float(lat_ms.mean()), 1),
                           'p99': round(float(np.percentile(lat_ms, 99)), 1), 'max': round(float(lat_ms.max()), 1)},
            'rss_mib_start': {n: round(v.get('VmRSS', 0), 1) for n, v in mem_start.items()},
            'rss_mib_end': {n: round(v.get('VmRSS', 0), 1) for n, v in mem_end.items()},
            'peak_rss_mib_end': {n: round(v.get('VmHWM', 0), 1) for n, v in mem_end.items()},
            'respawns': len(re.findall(r'respawning', _read(runner_log))),
        })
        return rep
    finally:
        probe.close()
        stop_processes([runner], grace=20)


def _qos(depth):
    from vidseg_ros.ros.common import reliable_qos
    return reliable_qos(depth)


def _read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def _last_diag(probe) -> dict:
    """node name -> its newest /diagnostics values."""
    from vidseg_ros.ros import graph
    out = {}
    with probe.cv:
        arrs = list(probe.messages[graph.DIAGNOSTICS_TOPIC])
    for _, arr in arrs:
        for s in arr.status:
            if s.name.startswith('vidseg: ') and '/' not in s.name:
                out[s.name[len('vidseg: '):]] = {kv.key: kv.value for kv in s.values}
    return out


def _all_active(probe) -> bool:
    from vidseg_ros.ros import graph
    with probe.cv:
        arrs = list(probe.messages[graph.DIAGNOSTICS_TOPIC])[-6:]
    states = {}
    for _, arr in arrs:
        for s in arr.status:
            if s.name.startswith('vidseg: lifecycle/'):
                states[s.name.split('/', 1)[1]] = {kv.key: kv.value for kv in s.values}.get('state')
    return len(states) == 3 and all(v == 'active' for v in states.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='vidseg_soak', description=__doc__.splitlines()[0])
    ap.add_argument('--frames', type=int, default=2000)
    ap.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    ap.add_argument('--size', default='1242x375', help='camera image WxH')
    ap.add_argument('--model', default='default')
    ap.add_argument('--schedule', default='fixed:5')
    ap.add_argument('--warmup', type=int, default=100, help='frames before the start memory reading')
    ap.add_argument('--scale', type=int, default=1, help='working-resolution downscale D of the three nodes')
    ap.add_argument('--param', action='append', default=[], metavar='NODE:NAME=VALUE',
                    help='extra vidseg_graph parameter (repeatable)')
    ap.add_argument('--log-dir', default='')
    ap.add_argument('--out', default='', help='also write the JSON report here')
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split('x'))
        if args.frames < 1 or args.rate <= 0 or w < 8 or h < 8:
            raise ValueError
    except ValueError:
        print(f'error: bad --frames/--rate/--size ({args.frames}, {args.rate}, {args.size!r})', file=sys.stderr)
        return 2
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    try:
        rep = run_soak(args.frames, args.rate, (w, h), args.model, args.schedule,
                       min(args.warmup, args.frames - 1), args.log_dir or None, scale=args.scale,
                       params=args.param)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    text = json.dumps(rep, indent=1, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return 0 if rep['balance_in_minus_out_minus_counted'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
