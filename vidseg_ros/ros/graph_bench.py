"""graph_bench: replay a video through the real ROS graph and compare it with the in-process core.

``python -m vidseg_ros.ros.graph_bench [--video V] [--rate HZ] [--model M] [--schedule S] --out r.json``

Starts the graph exactly as ``vidseg_graph`` does (``runner.commands`` / ``runner.Graph``: flow, keyframe
and propagation lifecycle nodes + the lifecycle manager, autostart) in an isolated ROS domain with
LOCALHOST discovery, and a probe node in this process that publishes ``/camera/image_raw`` (stamp =
wall clock at publish time) and records ``/semantic/labels``, ``/vidseg/propagation/stats``,
``/vidseg/keyframe/labels`` and ``/diagnostics``. Phases (one run, the same frames):

1. ``paced``: the frames at ``--rate`` (default: the video's rate), like a camera. Output rate, latency
   (image stamp -> label received: median, p99), frames in/out/dropped/degraded, keyframe ratio.
2. ``max``: the graph as fast as it keeps up, paced by its output: a closed loop that keeps at most
   ``--window`` frames in flight (a frame is published when fewer than W labels are outstanding), so no
   queue overflows and nothing is dropped.
3. ``core``: the in-process ``VideoSegmenter`` (same model, schedule, scale, flow preset) on the same
   frames as fast as possible, interleaved with the ``max`` phase in ``--chunks`` chunks (core on chunk
   c, then the graph on chunk c, ...) so that both see the same background load of a shared machine.
   ``graph/core`` = graph steady rate (sum of (labels - 1) / sum of first-to-last label time per chunk)
   / core rate (frames / processing time). Goal >= 0.85. Also the CPU each side spends per frame (graph:
   user+system time of every graph process from /proc over its chunks; core: this process's CPU time
   over its chunks), which depends much less on the background load than the rates.

``--kitti-rate``: the real-time mode instead: a 10 Hz 1242x375 stream made of real Cityscapes sequence
frames (centre crop to the KITTI aspect, resized, looped), ESPNetv2 s2.0 keyframes with the budget
schedule (``parallel=true``: the network runs on the keyframe node's own worker; utilisation 0.8), the
network on one thread and D=2 (flow and propagation at 621x188, labels at 1242x375); reports the sustained keyframe rate and the lag of the first vs the last 20% of the frames.

With ``--param propagation_node:two_sided=true`` the propagation node also publishes the delayed
two-sided topic (``/semantic/labels_two_sided``); each phase then also reports its labels, their
latency (image stamp -> delayed label received) and whether they came in stamp order.

``--external-graph``: do not start the graph (it runs elsewhere, e.g. in another network namespace);
only publish, record and report the paced phase.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from vidseg_ros.core.errors import ConfigError, InputError, VidsegError

KITTI_SIZE = (1242, 375)
NODES = ('flow_node', 'keyframe_node', 'propagation_node')
DEFAULT_KITTI_SCHEDULE = ('budget:camera_rate_hz=10,parallel=true,keyframe_cost_s=1.0,'
                          'propagate_cost_s=0.03,max_interval=30,utilisation=0.8')


# ---------------------------------------------------------------------------------------------- frames
def load_video(path, limit: int = 0):
    """All frames of a video as RGB uint8 (+ its fps)."""
    from vidseg_ros.core.io import VideoSource
    src = VideoSource(path)
    frames = []
    for f in src:
        frames.append(f.rgb)
        if limit and len(frames) >= limit:
            break
    if not frames:
        raise InputError(f'no frames in {path}')
    return frames, (src.fps or 25.0)


def kitti_frames(shared=None, size=KITTI_SIZE, limit: int = 0):
    """Real frames at the KITTI size: Cityscapes sequence snippets, centre-cropped to the KITTI aspect
    and area-resized (the snippets one after another; the caller loops over them)."""
    import cv2
    from vidseg_ros.core.paths import shared_dir
    root = Path(shared or shared_dir()) / 'data' / 'cityscapes_seq'
    files = sorted(root.glob('seq*/*_leftImg8bit.*'))
    if not files:
        raise InputError(f'no Cityscapes sequence frames under {root}')
    w, h = size
    out = []
    for f in files[:limit or None]:
        img = cv2.imread(str(f))
        if img is None:
            raise InputError(f'cannot read image {f}')
        H, W = img.shape[:2]
        ch = min(H, int(round(W * h / w)))
        y0 = (H - ch) // 2
        crop = img[y0:y0 + ch]
        out.append(np.ascontiguousarray(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)[:, :, ::-1]))
    return out


# ---------------------------------------------------------------------------------------------- probe
class Recorder:
    """Probe side: publishes camera frames and records label / stats / keyframe arrivals by stamp."""

    def __init__(self, name='vidseg_graph_bench'):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from vidseg_ros.ros import graph
        from vidseg_ros.ros.common import reliable_qos
        from vidseg_ros.ros.testing import Probe
        self.probe = Probe(name)
        node = self.probe.node
        self.cv = threading.Condition()
        self.labels = {}      # stamp_ns -> wall ns received
        self.labels_two_sided = {}   # the delayed topic (two_sided:=true): stamp_ns -> wall ns received
        self.two_sided_order = []    # its stamps in arrival order
        self.stats = {}       # stamp_ns -> dict
        self.kf = {}          # stamp_ns -> wall ns received
        self.diag = {}        # status name -> {key: value} (latest)
        self.label_sizes = set()
        self.label_classes = set()
        node.create_subscription(Image, graph.LABELS_TOPIC, self._on_labels, reliable_qos(200))
        node.create_subscription(Image, graph.KEYFRAME_LABELS_TOPIC, self._on_kf, reliable_qos(50))
        node.create_subscription(Image, graph.LABELS_TWO_SIDED_TOPIC, self._on_two_sided, reliable_qos(200))
        node.create_subscription(String, graph.STATS_TOPIC, self._on_stats, reliable_qos(200))
        node.create_subscription(DiagnosticArray, graph.DIAGNOSTICS_TOPIC, self._on_diag, reliable_qos(50))
        self.cam = node.create_publisher(Image, graph.CAMERA_TOPIC, reliable_qos(10))
        self._check_every = 10

    def _on_labels(self, msg):
        from vidseg_ros.ros.conversions import stamp_to_ns
        now = time.time_ns()
        ns = stamp_to_ns(msg.header.stamp)
        with self.cv:
            n = len(self.labels)
            self.labels.setdefault(ns, now)
            self.label_sizes.add((msg.width, msg.height, msg.encoding))
            if n % self._check_every == 0:  # a cheap check that the labels are a real segmentation
                arr = np.frombuffer(msg.data, np.uint8)
                self.label_classes.update(int(v) for v in np.unique(arr[::97]))
            self.cv.notify_all()

    def _on_two_sided(self, msg):
        from vidseg_ros.ros.conversions import stamp_to_ns
        now = time.time_ns()
        ns = stamp_to_ns(msg.header.stamp)
        with self.cv:
            if ns not in self.labels_two_sided:
                self.labels_two_sided[ns] = now
                self.two_sided_order.append(ns)

    def _on_kf(self, msg):
        from vidseg_ros.ros.conversions import stamp_to_ns
        with self.cv:
            self.kf.setdefault(stamp_to_ns(msg.header.stamp), time.time_ns())

    def _on_stats(self, msg):
        try:
            d = json.loads(msg.data)
            ns = int(d['stamp_ns'])
        except (ValueError, KeyError, TypeError):
            return
        with self.cv:
            self.stats[ns] = d

    def _on_diag(self, msg):
        with self.cv:
            for s in msg.status:
                self.diag[s.name] = {kv.key: kv.value for kv in s.values}

    def wait_graph(self, timeout: float = 120.0, subscribers: int = 3):
        """Wait until the managed nodes are active and subscribe to the camera topic."""
        deadline = time.monotonic() + timeout
        while self.cam.get_subscription_count() < subscribers:
            if time.monotonic() > deadline:
                raise VidsegError(f'graph did not subscribe to the camera topic within {timeout:.0f}s '
                                  f'({self.cam.get_subscription_count()} of {subscribers} subscribers)')
            time.sleep(0.1)
        for n in NODES:
            while self.probe.get_state(n, timeout=5.0) != 'active':
                if time.monotonic() > deadline:
                    raise VidsegError(f'{n} did not become active within {timeout:.0f}s')
                time.sleep(0.3)

    def publish(self, rgb, stamp_ns: int, frame_id='camera'):
        from std_msgs.msg import Header
        from vidseg_ros.ros.conversions import ndarray_to_image, ns_to_stamp
        self.cam.publish(ndarray_to_image(rgb, 'rgb8', Header(frame_id=frame_id, stamp=ns_to_stamp(stamp_ns))))

    def received(self, stamps) -> int:
        with self.cv:
            return sum(1 for s in stamps if s in self.labels)

    def diag_snapshot(self) -> dict:
        with self.cv:
            return {k: dict(v) for k, v in self.diag.items()}

    def close(self):
        self.probe.close()


def _next_stamp(last: list) -> int:
    ns = time.time_ns()
    if ns <= last[0]:
        ns = last[0] + 1
    last[0] = ns
    return ns


def run_paced(rec: Recorder, frames, rate: float, n: int, settle: float = 5.0, progress=True):
    """Publish ``n`` frames (looping over ``frames``) at ``rate`` Hz; returns [(stamp_ns, t_pub_ns)]."""
    from tqdm import tqdm
    sent, last = [], [0]
    period = 1.0 / rate
    t0 = time.monotonic()
    for i in tqdm(range(n), desc=f'paced {rate:g} Hz', disable=not progress, leave=False):
        delay = t0 + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ns = _next_stamp(last)
        rec.publish(frames[i % len(frames)], ns)
        sent.append((ns, time.time_ns()))
    _settle(rec, [s for s, _ in sent], settle)
    return sent


def run_windowed(rec: Recorder, frames, n: int, window: int = 3, stall: float = 2.0, progress=True):
    """Closed loop: at most ``window`` frames without a label in flight. Returns [(stamp_ns, t_pub_ns)]
    and the number of frames given up on (no label within ``stall`` s)."""
    from tqdm import tqdm
    sent, last = [], [0]
    given_up = 0
    stamps = set()

    def outstanding():
        return len(stamps) - sum(1 for s in stamps if s in rec.labels) - given_up

    for i in tqdm(range(n), desc=f'max (window {window})', disable=not progress, leave=False):
        with rec.cv:
            if not rec.cv.wait_for(lambda: outstanding() < window, stall):
                given_up += 1
        ns = _next_stamp(last)
        rec.publish(frames[i % len(frames)], ns)
        stamps.add(ns)
        sent.append((ns, time.time_ns()))
    _settle(rec, [s for s, _ in sent], stall)
    return sent, given_up


def _settle(rec, stamps, quiet: float):
    """Wait until every stamp has its label or nothing new arrived for ``quiet`` seconds."""
    want = set(stamps)
    last_n, last_t = -1, time.monotonic()
    while True:
        n = rec.received(want)
        if n >= len(want):
            return
        if n != last_n:
            last_n, last_t = n, time.monotonic()
        elif time.monotonic() - last_t > quiet:
            return
        time.sleep(0.05)


def diag_float(v):
    """A /diagnostics value (a string) as a float; None when absent or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _diag_delta(before: dict, after: dict, name: str, keys) -> dict:
    a, b = after.get(name, {}), before.get(name, {})
    out = {}
    for k in keys:
        va, vb = diag_float(a.get(k)), diag_float(b.get(k, 0))
        if va is not None:
            out[k] = va - (vb or 0.0)
    return out


def summarize(rec: Recorder, sent, diag_before=None, diag_after=None, window_frac: float = 0.2) -> dict:
    """Rates, latency (stamp -> label received), in/out/dropped/degraded, keyframes for one phase."""
    stamps = [s for s, _ in sent]
    with rec.cv:
        recv = {s: rec.labels[s] for s in stamps if s in rec.labels}
        stats = {s: rec.stats[s] for s in stamps if s in rec.stats}
        kf = [s for s in stamps if s in rec.kf]
    n_in, n_out = len(sent), len(recv)
    lat = np.array([(recv[s] - s) * 1e-6 for s in stamps if s in recv])  # ms
    t_first_pub = sent[0][1] if sent else 0
    t_out = sorted(recv.values())
    res = {'frames_in': n_in, 'frames_out': n_out, 'dropped': n_in - n_out,
           'degraded': int(sum(1 for d in stats.values() if d.get('degraded'))),
           'stats_received': len(stats),
           'keyframes': len(kf), 'keyframe_ratio': len(kf) / n_in if n_in else 0.0,
           'keyframes_on_time': int(sum(1 for d in stats.values() if d.get('distance') == 0)),
           'keyframe_stamps_ns': kf}
    pos = {s: i for i, s in enumerate(stamps)}
    res['keyframe_indices'] = [pos[s] for s in kf]
    if n_in > 1:
        res['input_rate_hz'] = (n_in - 1) / max((sent[-1][1] - sent[0][1]) * 1e-9, 1e-9)
    if n_out > 1:
        res['output_rate_hz'] = (n_out - 1) / max((t_out[-1] - t_out[0]) * 1e-9, 1e-9)
        res['throughput_fps'] = n_out / max((t_out[-1] - t_first_pub) * 1e-9, 1e-9)
        res['duration_s'] = (t_out[-1] - t_first_pub) * 1e-9
    if len(lat):
        res.update(latency_median_ms=float(np.median(lat)), latency_p99_ms=float(np.percentile(lat, 99)),
                   latency_mean_ms=float(lat.mean()), latency_max_ms=float(lat.max()))
        k = max(1, int(round(len(lat) * window_frac)))
        res['latency_first_ms'] = float(np.median(lat[:k]))   # first 20% of the labelled frames
        res['latency_last_ms'] = float(np.median(lat[-k:]))   # last 20%
        # The floor (10th percentile) of the same windows: with keyframe_wait the latency is a saw-tooth (a
        # keyframe frame waits for the network, the next few queue behind it) whose median follows the
        # keyframe interval; a backlog makes every frame late and lifts the floor.
        res['latency_floor_first_ms'] = float(np.percentile(lat[:k], 10))
        res['latency_floor_last_ms'] = float(np.percentile(lat[-k:], 10))
        res['latency_series_ms'] = [round(float(v), 2) for v in lat]
    if len(kf) > 1:
        res['keyframe_rate_hz'] = (len(kf) - 1) / max((kf[-1] - kf[0]) * 1e-9, 1e-9)
        gaps = np.diff(res['keyframe_indices'])
        res['keyframe_interval_frames'] = {'median': float(np.median(gaps)), 'max': int(gaps.max())}
    with rec.cv:
        two = {s: rec.labels_two_sided[s] for s in stamps if s in rec.labels_two_sided}
        order = [s for s in rec.two_sided_order if s in two]
    if two:   # the delayed topic (two_sided:=true): how late its labels come, and whether in stamp order
        lat2 = np.array([(two[s] - s) * 1e-6 for s in stamps if s in two])
        # pending: frames of the phase without a delayed label at its end (the frames after the last keyframe,
        # which wait for the next one, and any frame the graph dropped)
        res['two_sided'] = {'frames_out': len(two), 'pending': n_in - len(two),
                            'in_stamp_order': order == sorted(order),
                            'latency_median_ms': float(np.median(lat2)),
                            'latency_p99_ms': float(np.percentile(lat2, 99)),
                            'latency_max_ms': float(lat2.max())}
    if diag_before is not None and diag_after is not None:
        res['diagnostics'] = {
            'propagation_node': _diag_delta(diag_before, diag_after, 'vidseg: propagation_node',
                                            ('frames_in', 'frames_out', 'degraded', 'drops', 'dropped_overflow',
                                             'flow_timeouts', 'out_of_order', 'late_flows', 'keyframes_late',
                                             'keyframes_on_time', 'keyframe_wait_expired', 'keyframe_wait_skipped',
                                             'two_sided_fused',
                                             'two_sided_forward_only', 'two_sided_keyframes',
                                             'propagator_repropagated_steps', 'propagator_refined_frames',
                                             'propagator_refine_skipped', 'propagator_catch_up_refine_skipped',
                                             'region_context_used', 'region_context_missing')),
            'keyframe_node': _diag_delta(diag_before, diag_after, 'vidseg: keyframe_node',
                                         ('frames', 'keyframes', 'skipped_busy', 'errors')),
            'flow_node': _diag_delta(diag_before, diag_after, 'vidseg: flow_node', ('frames', 'flows')),
        }
        res['node_cost_mean_ms'] = {
            'flow_node': diag_float(diag_after.get('vidseg: flow_node', {}).get('mean_ms')),
            'keyframe_node': diag_float(diag_after.get('vidseg: keyframe_node', {}).get('mean_ms')),
            'propagation_node': diag_float(diag_after.get('vidseg: propagation_node', {}).get('cost_mean_ms'))}
        kn = diag_after.get('vidseg: keyframe_node', {})
        if 'schedule' in kn:
            res['schedule_at_end'] = kn['schedule']
    return res


# ---------------------------------------------------------------------------------------------- core
class CoreRunner:
    """The in-process VideoSegmenter (same model, schedule, D, DIS preset as the graph), timed per call."""

    def __init__(self, model: str, schedule: str, scale: int, num_threads: int = 0):
        from vidseg_ros.core.models import load_model
        from vidseg_ros.core.pipeline import VideoSegmenter
        from vidseg_ros.core.schedule import OperatingPoint
        from vidseg_ros.ros import graph
        self.model = load_model(model, num_threads=num_threads or None)
        self.seg = VideoSegmenter(self.model, OperatingPoint('graph_bench', scale, 1, True, False),
                                  schedule=graph.parse_schedule(schedule))
        self.frames = self.keyframes = 0
        self.seconds = 0.0

    def warmup(self, rgb):
        self.seg.process(rgb)
        self.seg.reset()

    def run(self, frames) -> float:
        """Process ``frames`` as fast as possible (state carries over between calls); returns seconds."""
        t0 = time.perf_counter()
        for f in frames:
            out = self.seg.process(f)
            self.keyframes += int(out.distance == 0)
        dt = time.perf_counter() - t0
        self.frames += len(frames)
        self.seconds += dt
        return dt

    def summary(self) -> dict:
        return {'frames': self.frames, 'seconds': self.seconds, 'fps': self.frames / max(self.seconds, 1e-9),
                'keyframes': self.keyframes, 'keyframe_ratio': self.keyframes / max(self.frames, 1),
                'model': self.model.name}


def run_core(frames, model: str, schedule: str, scale: int, num_threads: int = 0) -> dict:
    """The in-process VideoSegmenter on the frames as fast as possible."""
    c = CoreRunner(model, schedule, scale, num_threads)
    c.warmup(frames[0])
    c.run(frames)
    return c.summary()


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (/proc/<pid>/stat); None when it cannot be read."""
    from vidseg_ros.ros.common import proc_stat
    fields = proc_stat(pid)
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (TypeError, ValueError, IndexError):
        return None


def graph_cpu_s(procs) -> dict:
    """{process name: CPU seconds so far} of the graph's processes."""
    if procs is None:
        return {}
    out = {n: proc_cpu_s(p.pid) for n, p in procs.graph.procs.items()}
    return {n: v for n, v in out.items() if v is not None}


def run_max_interleaved(rec, frames, n: int, window: int, chunks: int, core: CoreRunner | None,
                        progress=True, procs=None):
    """Max-throughput phase interleaved with the core: for each chunk of the frames, the core processes
    it, then the graph (closed loop, ``window`` in flight). Interleaving keeps both under the same
    background load on a shared machine. Graph chunk rate = (labels - 1) / (last - first label)
    (steady state, pipeline fill excluded). Returns (sent, given_up, per-chunk list)."""
    from tqdm import tqdm
    idx = np.array_split(np.arange(n), max(1, min(chunks, n)))
    sent_all, given_up, per = [], 0, []
    for part in tqdm(idx, desc=f'max (window {window}) + core, interleaved', disable=not progress, leave=False):
        fr = [frames[i % len(frames)] for i in part]
        row = {'frames': len(fr)}
        if core is not None:
            c0 = time.process_time()
            row['core_s'] = core.run(fr)
            row['core_cpu_s'] = time.process_time() - c0
            time.sleep(0.5)  # onnxruntime's spinning threads settle
        g0 = graph_cpu_s(procs)
        sent, g = run_windowed(rec, fr, len(fr), window=window, progress=False)
        g1 = graph_cpu_s(procs)
        row['graph_cpu_s'] = {k: g1[k] - g0[k] for k in g1 if k in g0}
        given_up += g
        with rec.cv:
            t = sorted(rec.labels[s] for s, _ in sent if s in rec.labels)
        if len(t) > 1:
            row['graph_labels'] = len(t)
            row['graph_s'] = (t[-1] - t[0]) * 1e-9
        per.append(row)
        sent_all += sent
        time.sleep(0.5)
    return sent_all, given_up, per


# ---------------------------------------------------------------------------------------------- graph
def graph_argv(args) -> list:
    """vidseg_graph options for this run."""
    argv = ['--model', args.model, '--schedule', args.schedule, '--stop-timeout', '10']
    params = [f'{n}:scale={args.scale}' for n in NODES]
    if args.kf_threads:
        params.append(f'keyframe_node:num_threads={args.kf_threads}')
    if args.reliable:
        params += [f'{n}:input_qos=reliable' for n in NODES]
    params += list(args.param)
    for p in params:
        argv += ['--param', p]
    return argv


class GraphProcesses:
    """The graph started like ``vidseg_graph`` (runner.commands + runner.Graph), optionally with a
    command prefix (e.g. ``ip netns exec NS``) per node."""

    def __init__(self, runner_argv, log_dir, prefix=None):
        from vidseg_ros.ros import runner
        from vidseg_ros.ros.testing import node_env
        args = runner.build_parser().parse_args(runner_argv)
        cmds = runner.commands(args)
        prefix = prefix or {}
        self.cmds = [(inv, list(prefix.get(inv.name, [])) + argv) for inv, argv in cmds]
        os.environ.update({k: v for k, v in node_env().items() if k in ('PYTHONPATH', 'OMP_NUM_THREADS')})
        self.graph = runner.Graph(self.cmds, log_dir=str(log_dir), respawn=False)
        self.log_dir = Path(log_dir)

    def start(self):
        self.graph.start()

    def alive(self) -> list:
        return [n for n, p in self.graph.procs.items() if p.poll() is None]

    def dead(self) -> list:
        """Names of the graph's processes that are no longer running."""
        return [n for n in [inv.name for inv, _ in self.cmds] if n not in self.alive()]

    def logs(self, tail: int = 2000) -> str:
        out = []
        for f in sorted(self.log_dir.glob('*.log')):
            out.append(f'--- {f.name}\n' + f.read_text(errors='replace')[-tail:])
        return '\n'.join(out)

    def stop(self):
        self.graph.stop(10.0)


def isolate_domain(domain: int | None = None, transport: str = 'shm') -> int:
    """Set an isolated ROS_DOMAIN_ID (given, else derived from the pid), LOCALHOST discovery and
    (``transport='shm'``, unless a Fast DDS profile file is already set) the large-SHM profile."""
    if domain is None:
        env = os.environ.get('ROS_DOMAIN_ID')
        domain = int(env) if env else 150 + os.getpid() % 80
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if transport == 'shm':
        # config/fastdds.xml: a 32 MB shared-memory segment (the default 512 KB one loses images)
        from vidseg_ros.ros import graph
        env = graph.fastdds_profile_env()
        if env:
            os.environ.update(env)
            os.environ.pop('FASTDDS_BUILTIN_TRANSPORTS', None)  # the profile chooses the transports
    return domain


def bring_up(rec: Recorder, procs, frames, warmup: int, timeout: float) -> float:
    """Wait until the graph is active and takes the camera (the node logs in the error otherwise), then
    send ``warmup`` unmeasured frames one at a time (the first keyframe, caches, discovery of every
    endpoint). Returns the seconds the graph took to come up."""
    t0 = time.monotonic()
    try:
        rec.wait_graph(timeout)
    except VidsegError as e:
        raise VidsegError(f'{e}\n{procs.logs() if procs else ""}') from None
    startup = time.monotonic() - t0
    run_windowed(rec, frames, warmup, window=1, stall=10.0, progress=False)
    return startup


def release_profile(prof: str) -> None:
    """Remove the Fast DDS profile file ``isolate_domain`` wrote for this process (and unset it); any
    other profile is left alone."""
    if os.path.basename(prof) == f'vidseg_fastdds_{os.getpid()}.xml':
        os.environ.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
        try:
            os.remove(prof)
        except OSError:
            pass


def report(table: str, result: dict, out: str = '') -> int:
    """Print a benchmark's table, write its JSON to ``out`` (if given); exit status 0."""
    print(table)
    if out:
        from vidseg_ros.core.io import write_json
        write_json(out, result)
        print(f'wrote {out}')
    return 0


def run_bench(args) -> dict:
    """All phases of one run (see the module docstring)."""
    progress = not args.quiet
    if args.kitti_rate:
        frames = kitti_frames(args.shared or None, limit=args.kitti_images)
        fps = float(args.rate or 10.0)
        source = f'cityscapes_seq {len(frames)} frames -> {KITTI_SIZE[0]}x{KITTI_SIZE[1]}, looped'
    else:
        frames, fps = load_video(args.video, args.frames)
        if args.resize:
            import cv2
            frames = [np.ascontiguousarray(cv2.resize(f, args.resize, interpolation=cv2.INTER_AREA)) for f in frames]
        fps = float(args.rate or fps)
        source = f'{args.video} ({len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]})'
    n = args.frames or len(frames)
    result = {'source': source, 'frames': n, 'rate_hz': fps, 'model': args.model, 'schedule': args.schedule,
              'scale': args.scale, 'window': args.window, 'mode': 'kitti-rate' if args.kitti_rate else 'video',
              'external_graph': args.external_graph, 'input_qos': 'reliable' if args.reliable else 'sensor_data'}
    core = None
    if not args.kitti_rate and not args.external_graph and not args.skip_core and not args.skip_max:
        core = CoreRunner(args.model, args.schedule, args.scale, args.kf_threads)
        core.warmup(frames[0])
    if not args.external_graph:
        result['ros_domain_id'] = isolate_domain(args.domain, args.transport)
        result['fastdds_profile'] = os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE', '')
        result['fastdds_builtin_transports'] = os.environ.get('FASTDDS_BUILTIN_TRANSPORTS', '')
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix='vidseg_graph_bench_'))
    result['log_dir'] = str(log_dir)
    procs = None
    rec = None
    try:
        if not args.external_graph:
            procs = GraphProcesses(graph_argv(args), log_dir)
            procs.start()
        rec = Recorder()
        result['startup_s'] = bring_up(rec, procs, frames, args.warmup, args.startup_timeout)
        time.sleep(1.0)
        d0 = rec.diag_snapshot()
        sent = run_paced(rec, frames, fps, n, settle=args.settle, progress=progress)
        time.sleep(1.5)  # a fresh /diagnostics message
        d1 = rec.diag_snapshot()
        result['paced'] = summarize(rec, sent, d0, d1)
        if not args.kitti_rate and not args.external_graph and not args.skip_max:
            time.sleep(1.0)
            d0 = rec.diag_snapshot()
            sent, given_up, per = run_max_interleaved(rec, frames, n, args.window, args.chunks, core, progress,
                                                      procs)
            time.sleep(1.5)
            result['max'] = summarize(rec, sent, d0, rec.diag_snapshot())
            result['max']['given_up'] = given_up
            result['max']['chunks'] = per
            gl = sum(r.get('graph_labels', 1) - 1 for r in per)
            gs = sum(r.get('graph_s', 0.0) for r in per)
            if gs > 0:
                result['max']['steady_fps'] = gl / gs
            cpu = {}
            for r in per:
                for k, v in r.get('graph_cpu_s', {}).items():
                    cpu[k] = cpu.get(k, 0.0) + v
            if cpu:
                nf = sum(r['frames'] for r in per)
                result['max']['cpu_ms_per_frame'] = dict({k: 1000 * v / nf for k, v in cpu.items()},
                                                         total=1000 * sum(cpu.values()) / nf)
        result['label_sizes'] = sorted(list(s) for s in rec.label_sizes)
        result['label_classes_seen'] = sorted(rec.label_classes)
        with rec.cv:
            kf_pubs = rec.probe.node.get_publishers_info_by_topic('/vidseg/keyframe/labels')
        result['keyframe_publishers'] = [f'{i.node_namespace.rstrip("/")}/{i.node_name}' for i in kf_pubs]
    finally:
        if rec is not None:
            rec.close()
        if procs is not None:
            dead = procs.dead()
            if dead:
                result['dead_processes'] = dead
            procs.stop()
        release_profile(result.get('fastdds_profile', ''))
    if core is not None and core.frames:
        result['core'] = core.summary()
        result['core']['chunk_fps'] = [r['frames'] / r['core_s'] for r in result['max']['chunks'] if 'core_s' in r]
        result['core']['cpu_ms_per_frame'] = 1000 * sum(r.get('core_cpu_s', 0.0) for r in result['max']['chunks']) \
            / max(core.frames, 1)
        if result['max'].get('steady_fps'):
            result['graph_vs_core'] = result['max']['steady_fps'] / result['core']['fps']
    return result


def aligned(cols, rows) -> list:
    """A plain-text table: header, rule and one line per row, each column right-aligned to its widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]

    def line(vals):
        return '  '.join(str(v).rjust(w) for v, w in zip(vals, widths))
    return [line(cols), line(['-' * w for w in widths])] + [line(x) for x in rows]


def format_table(r: dict) -> str:
    def f(v, fmt='{:.1f}'):
        return '-' if v is None else fmt.format(v)
    cols = ('phase', 'in', 'out', 'drop', 'degr', 'kf', 'kf ratio', 'in Hz', 'out Hz', 'fps', 'lat med ms',
            'lat p99 ms', 'lag 1st20% ms', 'lag last20% ms', 'floor 1st20%', 'floor last20%')
    rows = []
    for ph in ('paced', 'max'):
        p = r.get(ph)
        if not p:
            continue
        chunked = ph == 'max' and 'steady_fps' in p  # rates over the chunks, pauses excluded
        rows.append((ph, p['frames_in'], p['frames_out'], p['dropped'], p['degraded'], p['keyframes'],
                     f(p['keyframe_ratio'], '{:.3f}'), '-' if chunked else f(p.get('input_rate_hz')),
                     '-' if chunked else f(p.get('output_rate_hz')),
                     f(p['steady_fps'] if chunked else p.get('throughput_fps')), f(p.get('latency_median_ms')), f(p.get('latency_p99_ms')),
                     f(p.get('latency_first_ms')), f(p.get('latency_last_ms')),
                     f(p.get('latency_floor_first_ms')), f(p.get('latency_floor_last_ms'))))
    c = r.get('core')
    if c:
        rows.append(('core', c['frames'], c['frames'], 0, 0, c['keyframes'],
                     f(c['keyframe_ratio'], '{:.3f}'), '-', '-', f(c['fps']), '-', '-', '-', '-', '-', '-'))
    out = [f"graph_bench [{r['mode']}] {r['source']} @ {r['rate_hz']:g} Hz; model {r['model']}, "
           f"schedule {r['schedule']}, D={r['scale']}"] + aligned(cols, rows)
    if 'graph_vs_core' in r:
        out.append(f"graph max steady throughput {r['max']['steady_fps']:.1f} fps / in-process core "
                   f"{r['core']['fps']:.1f} fps = {r['graph_vs_core']:.3f} (goal >= 0.85; interleaved in "
                   f"{len(r['max']['chunks'])} chunks)")
    gc, cc = r.get('max', {}).get('cpu_ms_per_frame'), r.get('core', {}).get('cpu_ms_per_frame')
    if gc and cc:
        out.append(f"CPU per frame: graph {gc['total']:.1f} ms (" + ', '.join(
            f'{k} {v:.1f}' for k, v in gc.items() if k != 'total') + f") vs in-process core {cc:.1f} ms")
    p = r.get('paced', {})
    if r['mode'] == 'kitti-rate' and p:
        out.append(f"keyframe rate sustained: {f(p.get('keyframe_rate_hz'), '{:.2f}')} Hz "
                   f"(interval median {p.get('keyframe_interval_frames', {}).get('median', '-')} frames); "
                   f"schedule at end: {r['paced'].get('schedule_at_end', '-')}")
    for ph in ('paced', 'max'):
        t = r.get(ph, {}).get('two_sided')
        if t:
            out.append(f"{ph}: delayed topic (two-sided): {t['frames_out']} labels ({t['pending']} not out at the end: "
                       f"waiting for a next keyframe, or dropped), latency median {t['latency_median_ms']:.0f} ms, "
                       f"p99 {t['latency_p99_ms']:.0f} ms, in stamp order: {t['in_stamp_order']}"
                       + _two_sided_kinds(r[ph]))
    for ph in ('paced', 'max'):
        d = r.get(ph, {}).get('diagnostics', {}).get('propagation_node', {})
        shed = [d.get(k) for k in ('propagator_refined_frames', 'propagator_refine_skipped',
                                   'propagator_catch_up_refine_skipped')]
        if shed[0] is not None and (shed[0] or shed[1] or shed[2]):   # a temporal module ran (or was shed)
            out.append(f"{ph}: temporal module on {int(shed[0])} frame(s); skipped to keep up (refine_max_lag) on "
                       f"{int(shed[1] or 0)} frame(s) and {int(shed[2] or 0)} catch-up step(s)")
    for ph in ('paced', 'max'):
        if r.get(ph, {}).get('node_cost_mean_ms'):
            out.append(f"{ph}: mean cost per call (ms, last 100): " + ', '.join(
                f'{k} {f(v)}' for k, v in r[ph]['node_cost_mean_ms'].items()))
    return '\n'.join(out)


def _two_sided_kinds(phase: dict) -> str:
    """'; fused N, forward-only M, keyframes K' from the propagation node's counters over the phase."""
    d = phase.get('diagnostics', {}).get('propagation_node', {})
    kinds = [(k, d.get(f'two_sided_{k}')) for k in ('fused', 'forward_only', 'keyframes')]
    if all(v is None for _, v in kinds):
        return ''
    return '; ' + ', '.join(f"{k.replace('_', '-')} {int(v) if v is not None else '-'}" for k, v in kinds)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='python -m vidseg_ros.ros.graph_bench', description=__doc__.splitlines()[0])
    ap.add_argument('--video', default='', help='video file (default: shared data/udacity/solidWhiteRight.mp4)')
    ap.add_argument('--frames', type=int, default=0, help='frames to publish (default: the whole video; '
                    'kitti-rate: 300)')
    ap.add_argument('--resize', default='', help="resize the video frames, e.g. '480x270'")
    ap.add_argument('--kitti-images', type=int, default=0, help='kitti-rate: use the first N sequence '
                    'images (0 = all 120), looped')
    ap.add_argument('--rate', type=float, default=0.0, help='publish rate Hz (default: the video rate; kitti: 10)')
    ap.add_argument('--model', default='', help="keyframe model (default: 'default'; kitti: espnetv2_s2.0)")
    ap.add_argument('--schedule', default='', help="keyframe schedule (default: fixed:5; kitti: budget:...)")
    ap.add_argument('--scale', type=int, default=0, help='working-resolution downscale D (default 1; kitti: 2)')
    ap.add_argument('--window', type=int, default=3, help='frames in flight in the max-throughput phase')
    ap.add_argument('--chunks', type=int, default=6, help='max phase: chunks interleaved with the core')
    ap.add_argument('--kf-threads', type=int, default=-1,
                    help='keyframe network threads (0 = library default; default 0, kitti: 1)')
    ap.add_argument('--reliable', action='store_true', help='reliable camera QoS in the nodes')
    ap.add_argument('--transport', choices=('shm', 'env'), default='shm',
                    help="'shm': a Fast DDS profile with a 32 MB shared-memory segment (unless a profile file "
                    "is set); 'env': leave the Fast DDS environment as it is")
    ap.add_argument('--param', action='append', default=[], metavar='NODE:NAME=VALUE',
                    help='extra vidseg_graph parameter (repeatable)')
    ap.add_argument('--kitti-rate', action='store_true', help='10 Hz 1242x375 real-time mode (see above)')
    ap.add_argument('--external-graph', action='store_true', help='do not start the graph; paced phase only')
    ap.add_argument('--skip-core', action='store_true')
    ap.add_argument('--skip-max', action='store_true')
    ap.add_argument('--warmup', type=int, default=5, help='unmeasured frames first')
    ap.add_argument('--settle', type=float, default=5.0, help='s without new labels that end a phase')
    ap.add_argument('--startup-timeout', type=float, default=120.0)
    ap.add_argument('--domain', type=int, default=None, help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID or '
                    'derived from the pid)')
    ap.add_argument('--shared', default='', help='shared data folder (default: vidseg_ros.core.paths)')
    ap.add_argument('--log-dir', default='', help='node logs (default: a temp folder)')
    ap.add_argument('--out', default='', help='write the result JSON here')
    ap.add_argument('--quiet', action='store_true', help='no progress bars')
    return ap


def resolve_args(args):
    """Fill mode-dependent defaults and validate."""
    k = args.kitti_rate
    args.model = args.model or ('espnetv2_s2.0' if k else 'default')
    args.schedule = args.schedule or (DEFAULT_KITTI_SCHEDULE if k else 'fixed:5')
    args.scale = args.scale or (2 if k else 1)
    args.kf_threads = (1 if k else 0) if args.kf_threads < 0 else args.kf_threads
    if k:
        args.frames = args.frames or 300
    if not k and not args.video:
        from vidseg_ros.core.paths import shared_dir
        args.video = str(Path(args.shared or shared_dir()) / 'data' / 'udacity' / 'solidWhiteRight.mp4')
    if not k and not Path(args.video).is_file():
        raise InputError(f'video not found: {args.video}')
    if args.resize:
        from vidseg_ros.ros.keyframe_node import parse_size
        args.resize = parse_size(args.resize)
    if args.rate < 0 or args.frames < 0:
        raise ConfigError('--rate and --frames must be >= 0')
    if args.window < 1:
        raise ConfigError(f'--window must be >= 1, got {args.window}')
    if args.scale < 1:
        raise ConfigError(f'--scale must be >= 1, got {args.scale}')
    from vidseg_ros.core.schedule import make_schedule
    from vidseg_ros.ros import graph
    make_schedule(graph.parse_schedule(args.schedule))
    return args


def main(argv=None) -> int:
    try:
        args = resolve_args(build_parser().parse_args(argv))
        result = run_bench(args)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return report(format_table(result), result, args.out)


if __name__ == '__main__':
    sys.exit(main())
