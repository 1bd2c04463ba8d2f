"""Real-time run of the whole graph at the KITTI camera rate (bounded: 80 frames at 10 Hz).

A 10 Hz 1242x375 stream of real frames (Cityscapes sequence frames centre-cropped to the KITTI aspect,
looped) goes through the graph started like ``vidseg_graph`` (graph_bench --kitti-rate; the default
``keyframe_wait``: frames wait for the network only while its results come within the bound) with
the budget schedule (``parallel=true``), the keyframe network
on one thread and D=2 (flow and propagation at 621x188, labels at 1242x375). Asserts: one label per
frame, no growing lag and keyframes keep coming (also in the last third of the run).

"No growing lag" is judged on the latency *floor* (10th percentile of the first and the last 20 % of the
frames, as graph_bench reports it), not the median.
With keyframe_wait a keyframe frame waits for the network (~0.25 s here) and the next two or three frames
queue behind it, then latency falls back to the propagation cost (~20 ms): a saw-tooth whose median
depends on the keyframe interval the budget schedule settles on (interval 5 at the start, 3-4 once it has
measured the network), not on a backlog. A backlog makes every frame late, so it lifts the floor: that is
what is asserted, with the median bounded absolutely by keyframe_wait's design. The packaged default
model keeps the test light; ``graph_bench --kitti-rate`` runs the same with ESPNetv2 s2.0.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')

pytestmark = [pytest.mark.ros, pytest.mark.shared, pytest.mark.slow, pytest.mark.timeout(180)]

N = 80


def test_kitti_rate_realtime(ros_domain, shared, tmp_path):
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.testing import node_env
    # Run the benchmark in a fresh process: its camera publisher must not share a DDS participant
    # (and its transport settings) with ROS nodes earlier tests created inside pytest.
    env = node_env({'FASTDDS_DEFAULT_PROFILES_FILE': graph.config_file('fastdds.xml'),
                    'OMP_NUM_THREADS': '1'})
    env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    out = tmp_path / 'r.json'
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.graph_bench',
           '--kitti-rate', '--model', 'default', '--frames', str(N), '--kitti-images', '40', '--scale', '2',
           '--schedule', 'budget:camera_rate_hz=10,parallel=true,keyframe_cost_s=0.5,max_interval=15,utilisation=0.8',
           '--domain', str(ros_domain), '--shared', str(shared), '--log-dir', str(tmp_path / 'logs'),
           '--settle', '4', '--quiet', '--out', str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0 and out.is_file(), (proc.stdout[-2000:], proc.stderr[-3000:])
    r = json.loads(out.read_text())
    p = r['paced']
    logs = '\n'.join(f.read_text(errors='replace')[-1500:] for f in sorted((tmp_path / 'logs').glob('*.log')))
    summary = {k: v for k, v in p.items() if k not in ('latency_series_ms', 'keyframe_stamps_ns')}
    print(summary)
    assert 'dead_processes' not in r, logs
    assert r['label_sizes'] == [[1242, 375, 'mono8']]
    # one label per frame, in real time
    assert p['frames_in'] == N and p['frames_out'] == N, (summary, logs)
    assert abs(p['input_rate_hz'] - 10.0) < 1.0 and p['output_rate_hz'] > 8.0, summary
    # no growing lag: the latency floor of the last 20 % of the frames is where the first 20 %'s was
    lat = np.asarray(p['latency_series_ms'])
    floor_first, floor_last = p['latency_floor_first_ms'], p['latency_floor_last_ms']
    assert floor_last <= 1.5 * floor_first + 50.0, (floor_first, floor_last, lat.round().tolist(), summary)
    # and the saw-tooth stays within keyframe_wait's bound (0.3 s, adaptive up to 0.5 s) plus a frame's own work
    assert p['latency_last_ms'] < 500.0, (lat.round().tolist(), summary)
    # keyframes keep happening
    kf = p['keyframe_stamps_ns']
    assert len(kf) >= 4, summary
    assert max(p['keyframe_indices']) >= 2 * N // 3, p['keyframe_indices']
    assert p['keyframe_interval_frames']['max'] <= N // 3, summary
