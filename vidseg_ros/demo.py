"""vidseg_demo: the whole ROS 2 graph on a video, image folder, rosbag or a generated synthetic drive.

    vidseg_demo [--input VIDEO|IMAGE_DIR|BAG] [--out out/demo] [--frames N] [--rate HZ] [--model default]
                [--schedule fixed:5] [--scale D|auto] [--domain-id ID] [--gt DIR] [--keep-input] [--deterministic]

1. input: by default a synthetic drive (``core.synth``, exact labels) generated once into ``<out>/input``;
2. starts flow, keyframe and propagation nodes + the lifecycle manager (autostart) with ``ros.runner`` in an
   isolated ROS domain (localhost discovery), logs in ``<out>/logs``, and waits until the graph is active;
3. streams the frames at their rate on ``/camera/image_raw`` (rgb8, stamp = wall clock at the frame's
   time, frame_id ``camera``; reliable, deep node queues: a lossless replay) with the config's keyframe_wait
   (0.3 s: a keyframe frame waits for the network while its results come within that; ``--param
   propagation_node:keyframe_wait=0``: live mode, frames never wait; ``--deterministic``: frames wait for
   flow and network whatever it takes, so while the network keeps up with the schedule the labels equal
   ``vidseg run``'s) and collects
   ``/semantic/labels``, ``/semantic/confidence``, keyframe decisions, propagation stats and ``/diagnostics``;
   always stops the graph (errors, Ctrl-C);
4. writes ``<out>/labels/<stem>.png``, ``<out>/overlay.mp4`` and ``<out>/summary.json`` (rate, latency,
   keyframes, mIoU vs ground truth, temporal consistency) and prints a table.

Exit status: 0 success, 2 bad input/options (``error: <message>``), 1 graph failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vidseg_ros.cli import positive_int, scale_arg
from vidseg_ros.core.errors import InputError, VidsegError

FRAME_ID = 'camera'
LINKS_WAIT_S = 30.0  # after the graph is active: max wait for every node's internal topics to be matched
DETERMINISTIC_WAIT_S = 5.0  # --deterministic: max wait of a frame for its flow and for the keyframe network
SYNTH_DEFAULTS = dict(frames=60, size=(640, 360), fps=10.0, seed=0)
AUTO_SCALE_PIXELS = 640 * 360
OVERLAY_MAX_WIDTH = 1280


class GraphError(VidsegError):
    """The ROS graph did not come up / produced nothing (exit status 1)."""


# ------------------------------------------------------------------------------------------ options
def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {s!r}') from None
    if not v > 0 or v != v or v == float('inf'):
        raise argparse.ArgumentTypeError(f'expected a positive number, got {s!r}')
    return v




def auto_scale(size_wh) -> int:
    """Smallest D in 1, 2, 4, 8, 16 with (W/D) * (H/D) <= AUTO_SCALE_PIXELS (bounds flow/propagation cost)."""
    for d in (1, 2, 4, 8, 16):
        if (size_wh[0] / d) * (size_wh[1] / d) <= AUTO_SCALE_PIXELS * 1.001:
            return d
    return 16


def _size(s):
    try:
        w, h = (int(v) for v in str(s).lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be WxH (e.g. 640x360), got {s!r}') from None
    return w, h


def _domain(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f'domain id must be an integer 0..232, got {s!r}') from None
    if not 0 <= v <= 232:
        raise argparse.ArgumentTypeError(f'domain id must be within 0..232, got {v}')
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's default prints the usage too)
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog='vidseg_demo', description=__doc__.splitlines()[0])
    p.add_argument('--input', default=None,
                   help='video, image folder, image or rosbag2 (default: a generated synthetic drive)')
    p.add_argument('--out', default='out/demo', help='output folder (default out/demo)')
    p.add_argument('--frames', type=positive_int, default=None,
                   help=f'synthetic drive length (default {SYNTH_DEFAULTS["frames"]}) / at most N input frames')
    p.add_argument('--rate', type=_positive_float, default=None,
                   help='publish rate in Hz (default: the input\'s frame rate, else 10)')
    p.add_argument('--model', default='default', help='keyframe model (registry name or file; default: packaged)')
    p.add_argument('--schedule', default='fixed:5', help="keyframe schedule (default 'fixed:5')")
    p.add_argument('--scale', type=scale_arg, default='auto',
                   help="working-resolution downscale D; 'auto' (default): the smallest D with a working size of "
                        f"at most {AUTO_SCALE_PIXELS} pixels (640x360 -> 1, 1280x720 -> 2)")
    p.add_argument('--domain-id', type=_domain, default=None, help='ROS domain id (default: a free one is picked)')
    p.add_argument('--gt', default=None, help='ground-truth label folder (PNG, matched by file stem)')
    p.add_argument('--gt-format', default='trainids', choices=('trainids', 'labelids', 'camvid'),
                   help='ground-truth encoding (default trainids)')
    p.add_argument('--topic', default=None, help='image topic (rosbag input)')
    p.add_argument('--size', type=_size, default=SYNTH_DEFAULTS['size'], help='synthetic frame size WxH (640x360)')
    p.add_argument('--seed', type=int, default=SYNTH_DEFAULTS['seed'], help='synthetic drive seed (0)')
    p.add_argument('--keep-input', action='store_true',
                   help='reuse an existing <out>/input drive even if its parameters differ')
    p.add_argument('--deterministic', action='store_true',
                   help='frames wait for their flow and keyframe frames for the network (propagation_node '
                        'keyframe_wait and flow_timeout = 5 s): while the '
                        "network keeps up, labels equal the offline pipeline's (vidseg run); default: the "
                        "config's keyframe_wait (0.3 s while the network's results come within it)")
    p.add_argument('--param', action='append', default=[], metavar='NODE:NAME=VALUE',
                   help='extra node parameter (repeatable), e.g. keyframe_node:num_threads=2')
    p.add_argument('--startup-timeout', type=_positive_float, default=240.0,
                   help='seconds to wait for the graph to become active (first run exports ONNX)')
    p.add_argument('--wait', type=_positive_float, default=5.0,
                   help='seconds without new labels after the last frame before giving up on the rest (default 5; '
                        'with --deterministic at least 7, longer than a frame may wait for its flow)')
    p.add_argument('--no-overlay', action='store_true', help='do not write overlay.mp4')
    p.add_argument('--no-tc', action='store_true', help='skip the temporal consistency metric')
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars')
    return p


# ------------------------------------------------------------------------------------------ input
def _synth_matches(meta_path: Path, frames, size, fps, seed) -> bool:
    try:
        m = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    d = meta_path.parent
    return (m.get('frames') == frames and list(m.get('size', [])) == list(size) and
            float(m.get('fps', -1)) == float(fps) and m.get('seed') == seed and
            len(list((d / 'images').glob('*.png'))) == frames and len(list((d / 'labels').glob('*.png'))) == frames)


def prepare_input(args, out: Path, log=print):
    """-> (FrameSource, gt_dir or None, description dict)."""
    from vidseg_ros.core.io import open_source
    if args.input is None:
        frames = args.frames or SYNTH_DEFAULTS['frames']
        fps = args.rate or SYNTH_DEFAULTS['fps']
        d = out / 'input'
        meta = d / 'meta.json'
        if meta.is_file() and (args.keep_input or _synth_matches(meta, frames, args.size, fps, args.seed)):
            log(f'[demo] reusing synthetic drive {d}')
        else:
            from vidseg_ros.core.synth import generate_drive
            if d.exists():
                shutil.rmtree(d)
            log(f'[demo] generating a synthetic drive: {frames} frames {args.size[0]}x{args.size[1]} '
                f'at {fps:g} fps (seed {args.seed}) -> {d}')
            generate_drive(d, frames=frames, size=args.size, fps=fps, seed=args.seed, progress=not args.quiet)
        m = json.loads(meta.read_text())
        src = open_source(d / 'images', fps=float(m['fps']))
        return src, (Path(args.gt) if args.gt else d / 'labels'), {'kind': 'synthetic', 'path': str(d),
                                                                   'frames': m['frames'], 'size': m['size'],
                                                                   'fps': m['fps'], 'seed': m['seed']}
    p = Path(args.input)
    gt = Path(args.gt) if args.gt else None
    # a synthetic drive folder (images/ + labels/ + meta.json): its images, with its labels as ground truth
    if p.is_dir() and (p / 'images').is_dir() and (p / 'meta.json').is_file():
        try:
            fps = float(json.loads((p / 'meta.json').read_text()).get('fps') or 0) or None
        except ValueError:
            fps = None
        if gt is None and (p / 'labels').is_dir():
            gt = p / 'labels'
        p = p / 'images'
    else:
        fps = None
    src = open_source(p, topic=args.topic, fps=fps or args.rate)
    if gt is not None and not gt.is_dir():
        raise InputError(f'ground-truth folder not found: {gt}')
    return src, gt, src.describe()


# ------------------------------------------------------------------------------------------ ROS side
def _ros_env(domain: int):
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    # the node processes run the same vidseg_ros as this process (source tree or installed)
    here = str(Path(__file__).resolve().parents[1])
    parts = [x for x in os.environ.get('PYTHONPATH', '').split(os.pathsep) if x]
    if here not in parts:
        os.environ['PYTHONPATH'] = os.pathsep.join([here] + parts)


class Collector:
    """A probe node (own rclpy context) that publishes camera frames and records the graph's outputs."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from vidseg_ros.ros import graph
        from vidseg_ros.ros.common import latched_qos, reliable_qos
        from vidseg_ros.ros.testing import Probe
        self.probe = Probe('vidseg_demo')
        node = self.probe.node
        self.lock = threading.Lock()
        self.labels = queue.Queue()         # (stamp_ns, receipt wall ns, labels uint8)
        self.confidence = {}                # stamp_ns -> mean confidence [0, 1]
        self.decisions = {}                 # stamp_ns -> (keyframe, reason)
        self.stats = {}                     # stamp_ns -> propagation stats dict
        self.diagnostics = {}               # status name -> (level, message, {key: value})
        self.diag_time = {}                 # status name -> receipt (monotonic)
        self.classes = None
        self.info = None
        self.kf_labels = 0
        self.last_receipt = None
        self.first_receipt = None
        self.n_labels = 0
        self.cam = node.create_publisher(Image, graph.CAMERA_TOPIC, reliable_qos(30))
        self.subs = [
            node.create_subscription(Image, graph.LABELS_TOPIC, self._on_labels, reliable_qos(100)),
            node.create_subscription(Image, graph.CONFIDENCE_TOPIC, self._on_conf, reliable_qos(100)),
            node.create_subscription(String, graph.KEYFRAME_DECISION_TOPIC, self._on_decision, reliable_qos(100)),
            node.create_subscription(String, graph.STATS_TOPIC, self._on_stats, reliable_qos(100)),
            node.create_subscription(Image, graph.KEYFRAME_LABELS_TOPIC, self._on_kf, reliable_qos(10)),
            node.create_subscription(DiagnosticArray, graph.DIAGNOSTICS_TOPIC, self._on_diag, reliable_qos(20)),
            node.create_subscription(String, graph.CLASSES_TOPIC, self._on_classes, latched_qos()),
            node.create_subscription(String, graph.KEYFRAME_INFO_TOPIC, self._on_info, latched_qos()),
        ]
        self.labels_sub = self.subs[0]

    # callbacks (spin thread)
    def _on_labels(self, msg):
        from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
        now = time.time_ns()
        arr = np.array(image_to_ndarray(msg), dtype=np.uint8, copy=True)
        with self.lock:
            self.n_labels += 1
            self.last_receipt = time.monotonic()
            if self.first_receipt is None:
                self.first_receipt = self.last_receipt
        self.labels.put((stamp_to_ns(msg.header.stamp), now, arr))

    def _on_conf(self, msg):
        from vidseg_ros.ros.conversions import image_to_ndarray, stamp_to_ns
        with self.lock:
            self.confidence[stamp_to_ns(msg.header.stamp)] = float(image_to_ndarray(msg).mean()) / 255.0

    def _on_decision(self, msg):
        try:
            d = json.loads(msg.data)
            with self.lock:
                self.decisions[int(d['stamp_ns'])] = (bool(d['keyframe']), str(d.get('reason', '')))
        except (ValueError, KeyError, TypeError):
            pass

    def _on_stats(self, msg):
        try:
            d = json.loads(msg.data)
            with self.lock:
                self.stats[int(d['stamp_ns'])] = d
        except (ValueError, KeyError, TypeError):
            pass

    def _on_kf(self, msg):
        with self.lock:
            self.kf_labels += 1

    def _on_diag(self, msg):
        now = time.monotonic()
        with self.lock:
            for s in msg.status:
                self.diag_time[s.name] = now
                self.diagnostics[s.name] = (int.from_bytes(s.level, 'little') if isinstance(s.level, bytes)
                                            else int(s.level), s.message, {kv.key: kv.value for kv in s.values})

    def _on_classes(self, msg):
        try:
            self.classes = json.loads(msg.data)
        except ValueError:
            pass

    def _on_info(self, msg):
        try:
            self.info = json.loads(msg.data)
        except ValueError:
            pass

    def ready(self) -> bool:
        """Graph active: classes latched (the propagation node, activated last, is active), the three
        nodes subscribe to the camera and the labels publisher is matched."""
        return (self.classes is not None and self.cam.get_subscription_count() >= 3
                and self.labels_sub.get_publisher_count() >= 1)

    def links(self) -> tuple:
        """``graph.links_ready`` on the latest /diagnostics."""
        from vidseg_ros.ros import graph
        with self.lock:
            return graph.links_ready({k: v[2] for k, v in self.diagnostics.items()})

    def other_nodes(self) -> list:
        return [n for n in self.probe.node.get_node_names() if n != 'vidseg_demo']

    def close(self):
        self.probe.close()


def pick_domain(given, log=print):
    """(domain id, Collector) on a domain with no other ROS nodes (when not given)."""
    if given is not None:
        _ros_env(given)
        return given, Collector()
    base = 100 + (os.getpid() * 13) % 100
    for k in range(8):
        dom = (base + 17 * k) % 200 + 20
        _ros_env(dom)
        col = Collector()
        time.sleep(0.7)  # discovery of anyone already there (localhost)
        others = col.other_nodes()
        if not others:
            return dom, col
        log(f'[demo] ROS domain {dom} is in use ({", ".join(others[:3])}); trying another')
        col.close()
    raise GraphError('no free ROS domain id found; pass --domain-id')


def graph_commands(args, scale: int):
    from vidseg_ros.ros import graph, runner
    ra = ['--model', args.model, '--schedule', args.schedule]
    for n in [s.name for s in graph.MANAGED_NODES]:
        # lossless replay of a file: reliable camera input with a deep queue (a slow node queues, not drops)
        ra += ['--param', f'{n}:scale={scale}', '--param', f'{n}:input_qos=reliable',
               '--param', f'{n}:queue_depth=100']
    ra += ['--param', 'lifecycle_manager:autostart=true']
    if args.deterministic:
        # frames wait for the keyframe network and for their flow: a stall of the machine then delays
        # labels instead of degrading them (otherwise the config's keyframe_wait and flow_timeout apply)
        ra += ['--param', f'propagation_node:keyframe_wait={DETERMINISTIC_WAIT_S}',
               '--param', f'propagation_node:flow_timeout={DETERMINISTIC_WAIT_S}',
               '--param', 'propagation_node:refine_max_lag=0.0']   # a temporal module on every frame
    for p in args.param:
        ra += ['--param', p]
    return runner.commands(runner.build_parser().parse_args(ra))


def propagation_param_of(args, name: str) -> float:
    """A numeric propagation node parameter in the graph these options start: a --param / --deterministic
    override, else the config file's value (0 when the file does not set it)."""
    import yaml
    inv = next(inv for inv, _ in graph_commands(args, 1) if inv.name == 'propagation_node')
    path, overrides = inv.parameters
    if name in overrides:
        return float(overrides[name])
    with open(path) as f:
        params = (yaml.safe_load(f) or {}).get('propagation_node', {}).get('ros__parameters', {})
    return float(params.get(name, 0.0))


def keyframe_wait_of(args) -> float:
    """The propagation node's keyframe_wait in the graph these options start."""
    return propagation_param_of(args, 'keyframe_wait')


def _log_errors(log_dir: Path, n: int = 4) -> str:
    """The first error line of each process log, message part only (the root cause comes first)."""
    out = []
    for f in sorted(Path(log_dir).glob('*.log')):
        for ln in f.read_text(errors='replace').splitlines():
            if '[ERROR]' in ln or 'Traceback' in ln or ln.startswith('error:'):
                out.append(f'{f.stem}: {ln.split("]: ", 1)[-1].strip()[:300]}')
                break
    return '; '.join(out[:n])


def _startup_failure(log_dir: Path) -> str | None:
    """The lifecycle manager's 'startup: ...' error, if it logged one."""
    f = Path(log_dir) / 'lifecycle_manager.log'
    if not f.is_file():
        return None
    for ln in f.read_text(errors='replace').splitlines():
        if '[ERROR]' in ln and ']: startup: ' in ln:
            return ln.split(']: startup: ', 1)[1].strip()
    return None


def check_model(spec: str):
    """Resolve the model spec (registry name / packaged default / file) before starting processes."""
    from vidseg_ros.core.models import resolve
    _, wpath, _ = resolve(spec)
    if not Path(wpath).is_file():
        raise InputError(f'weights of model {spec!r} not found: {wpath}')


# ------------------------------------------------------------------------------------------ run
def _percentile(v, q):
    return float(np.percentile(v, q)) if len(v) else None


def _label_files_by_stem(gt_dir: Path) -> dict:
    from vidseg_ros.cli import _key
    files = {}
    for p in sorted(gt_dir.iterdir()):
        if p.is_file() and p.suffix.lower() == '.png':
            files.setdefault(p.stem, p)
            files.setdefault(_key(p.stem), p)
    return files


def run(args, log=print) -> dict:
    import itertools

    from tqdm import tqdm

    from vidseg_ros.core.io import LabelWriter
    from vidseg_ros.ros import graph
    from vidseg_ros.ros.conversions import ndarray_to_image, ns_to_stamp
    from vidseg_ros.ros.runner import Graph
    from std_msgs.msg import Header

    t_all = time.monotonic()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f'--out exists and is not a folder: {out}')
    if args.input is not None and not Path(args.input).exists():
        raise InputError(f'input not found: {args.input}')
    if args.gt is not None and not Path(args.gt).is_dir():
        raise InputError(f'ground-truth folder not found: {args.gt}')
    from vidseg_ros.core.schedule import make_schedule
    from vidseg_ros.ros.graph import parse_schedule
    make_schedule(parse_schedule(args.schedule))  # ConfigError before anything starts
    graph_commands(args, 1)  # bad --param / config / model: error before anything starts
    check_model(args.model)
    out.mkdir(parents=True, exist_ok=True)
    src, gt_dir, src_desc = prepare_input(args, out, log)
    rate = args.rate or src.fps or 10.0
    try:
        first = next(iter(src))
    except StopIteration:
        raise InputError(f'no frames in {src.path}') from None
    size = (first.rgb.shape[1], first.rgb.shape[0])
    scale = auto_scale(size) if args.scale == 'auto' else int(args.scale)
    cmds = graph_commands(args, scale)
    t_input = time.monotonic() - t_all
    total = None
    try:
        total = len(src)
    except TypeError:
        pass
    limit = args.frames if args.input is not None else None
    if limit:
        total = min(total, limit) if total else limit

    label_dir = out / 'labels'
    if label_dir.is_dir():
        for f in label_dir.glob('*.png'):
            f.unlink()
    writer = LabelWriter(label_dir)
    log_dir = out / 'logs'
    if log_dir.is_dir():
        for f in log_dir.glob('*.log'):
            f.unlink()

    domain, col = pick_domain(args.domain_id, log)
    g = Graph(cmds, log_dir=str(log_dir))
    sent = {}          # stamp_ns -> (index, stem)
    order = []         # stems in send order
    received = {}      # stem -> receipt latency s
    extra = 0
    t_stream = t_ready = None
    publish_times = []

    def drain():
        nonlocal extra
        while True:
            try:
                ns, recv_ns, arr = col.labels.get_nowait()
            except queue.Empty:
                return
            k = sent.get(ns)
            if k is None or k[1] in received:
                extra += 1
                continue
            writer.write(k[1], arr)
            received[k[1]] = (recv_ns - ns) * 1e-9

    try:
        log(f'[demo] starting the graph (model {args.model}, schedule {args.schedule}, D={scale}) '
            f'in ROS domain {domain}; logs in {log_dir}')
        t_start = time.monotonic()
        g.start()
        deadline = time.monotonic() + args.startup_timeout
        next_log_check = time.monotonic() + 1.0
        while not col.ready():
            g.poll()
            mgr = g.procs.get('lifecycle_manager')
            if mgr is not None and mgr.poll() is not None:
                raise GraphError(f'the lifecycle manager exited with {mgr.returncode} before the graph became '
                                 f'active ({_log_errors(log_dir) or "no errors logged"}); logs: {log_dir}')
            if time.monotonic() > next_log_check:
                next_log_check = time.monotonic() + 0.5
                fail = _startup_failure(log_dir)
                if fail:
                    raise GraphError(f'graph startup failed: {fail} ({_log_errors(log_dir)}); logs: {log_dir}')
            if time.monotonic() > deadline:
                raise GraphError(f'graph not active after {args.startup_timeout:.0f} s '
                                 f'({_log_errors(log_dir) or "no errors logged"}); logs: {log_dir}')
            time.sleep(0.1)
        # the internal topics (flow, keyframe results) are volatile: a frame streamed before they are matched
        # both ways loses its flow or keyframe result, so wait until every node reports them linked
        links_deadline = time.monotonic() + LINKS_WAIT_S
        while not col.links()[0]:
            g.poll()
            if time.monotonic() > links_deadline:
                log(f'[demo] warning: internal topics not matched after {LINKS_WAIT_S:.0f} s '
                    f'({col.links()[1]}); streaming anyway, the first frames may be degraded')
                break
            time.sleep(0.1)
        t_ready = time.monotonic() - t_start
        log(f'[demo] graph active after {t_ready:.1f} s; streaming at {rate:g} Hz')

        frames = iter(src)
        if limit:
            frames = itertools.islice(frames, limit)
        t0_mono = time.monotonic() + 0.2
        t0_wall_ns = time.time_ns() + 200_000_000
        first_stamp = None
        bar = tqdm(total=total, unit='frame', desc='streaming', disable=args.quiet)
        t_stream = time.monotonic()
        try:
            for i, fr in enumerate(frames):
                if args.rate or first_stamp is None or not src.fps:
                    off = i / rate
                else:
                    off = max(0.0, fr.stamp_s - first_stamp)
                if first_stamp is None:
                    first_stamp = fr.stamp_s
                while True:
                    drain()
                    left = t0_mono + off - time.monotonic()
                    if left <= 0:
                        break
                    time.sleep(min(left, 0.01))
                ns = t0_wall_ns + int(round(off * 1e9))
                if ns in sent:
                    ns = max(sent) + 1
                sent[ns] = (i, fr.stem)
                order.append(fr.stem)
                col.cam.publish(ndarray_to_image(fr.rgb, 'rgb8', Header(frame_id=FRAME_ID, stamp=ns_to_stamp(ns))))
                publish_times.append(time.monotonic())
                g.poll()
                bar.update(1)
                bar.set_postfix(labelled=len(received), refresh=False)
            if not sent:
                raise InputError(f'no frames in {src.path}')
            # bounded wait for the last labels: until all arrived or nothing new for --wait seconds (in
            # deterministic mode longer than a frame may wait in the propagation node, or its label is cut off)
            wait = max(args.wait, DETERMINISTIC_WAIT_S + 2.0) if args.deterministic else args.wait
            last_progress = time.monotonic()
            n_prev = len(received)
            while len(received) < len(sent):
                drain()
                bar.set_postfix(labelled=len(received))
                if len(received) != n_prev:
                    n_prev, last_progress = len(received), time.monotonic()
                if time.monotonic() - last_progress > wait:
                    break
                time.sleep(0.02)
            time.sleep(0.3)  # trailing confidence / stats / decisions
            drain()
            # a /diagnostics snapshot of every node taken after the last output (period 1 s)
            t_last = time.monotonic()
            names = [f'vidseg: {s.name}' for s in graph.MANAGED_NODES]
            while time.monotonic() - t_last < 2.5 and not all(col.diag_time.get(n, 0) > t_last for n in names):
                time.sleep(0.05)
        finally:
            bar.close()
        t_stream = time.monotonic() - t_stream
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a clean stop is bounded (runner timeouts)
        try:
            g.stop()
            col.close()
        finally:
            signal.signal(signal.SIGINT, old)
    src_desc = dict(src_desc, size=list(size))
    times = {'input': t_input, 'startup': t_ready, 'streaming': t_stream}
    return _report(args, out, src, src_desc, gt_dir, limit, rate, scale, domain, col, sent, order, received,
                   extra, publish_times, times, t_all, writer, log)


def _class_set(col, fallback='cityscapes'):
    from vidseg_ros.core.classes import ClassSet, get_class_set
    c = col.classes
    if c:
        try:
            return ClassSet(c['name'], tuple(c['names']), np.asarray(c['colors'], np.uint8),
                            int(c.get('ignore_index', 255)))
        except (KeyError, TypeError, ValueError):
            pass
    return get_class_set(fallback)


def _report(args, out, src, src_desc, gt_dir, limit, rate, scale, domain, col, sent, order, received, extra,
            publish_times, times, t_all, writer, log) -> dict:
    import itertools

    import cv2
    from tqdm import tqdm

    from vidseg_ros.core.flow import FlowEstimator
    from vidseg_ros.core.io import OverlayVideoWriter, read_label_png, write_json
    from vidseg_ros.core.metrics import AccuracyByDistance, ConfusionMatrix, TemporalConsistency

    cs = _class_set(col)
    k = len(cs.names)
    stem_ns = {stem: ns for ns, (_, stem) in sent.items()}
    lat = np.array([received[s] for s in order if s in received], np.float64)
    missing = [s for s in order if s not in received]
    kf_dec = [col.decisions[ns] for ns in sent if ns in col.decisions]
    n_kf = sum(1 for d in kf_dec if d[0])
    n_busy = sum(1 for d in kf_dec if not d[0] and d[1] == 'busy')
    stats = [col.stats[ns] for ns in sent if ns in col.stats]
    degraded = sum(1 for s in stats if s.get('degraded'))
    reasons = collections.Counter(r for s in stats if s.get('degraded') for r in s.get('reasons') or [])
    conf = [col.confidence[ns] for ns in sent if ns in col.confidence]
    rx_span = (col.last_receipt - col.first_receipt) if col.first_receipt and col.n_labels > 1 else None
    in_span = (publish_times[-1] - publish_times[0]) if len(publish_times) > 1 else None

    gt_files = _label_files_by_stem(gt_dir) if gt_dir is not None and gt_dir.is_dir() else {}
    cm = ConfusionMatrix(k) if gt_files else None
    by_dist = AccuracyByDistance(k) if gt_files else None
    tc = None if args.no_tc else TemporalConsistency(k, FlowEstimator('dis', preset='medium'))
    tc_error = None   # why the temporal consistency could not be measured
    overlay = None if args.no_overlay else OverlayVideoWriter(out / 'overlay.mp4', rate, cs)
    n_gt = 0
    t_eval = time.monotonic()
    frames = iter(src)
    if limit:
        frames = itertools.islice(frames, limit)
    try:
        for fr in tqdm(frames, total=len(order), unit='frame', desc='evaluating', disable=args.quiet):
            if fr.stem not in stem_ns:
                break
            pred = None
            if fr.stem in received:
                pred = cv2.imread(str(writer.dir / f'{fr.stem}.png'), cv2.IMREAD_UNCHANGED)
            if overlay is not None:
                ov_w = min(fr.rgb.shape[1], OVERLAY_MAX_WIDTH)
                if ov_w < fr.rgb.shape[1]:  # large inputs: a smaller video (written faster)
                    ov_h = int(round(fr.rgb.shape[0] * ov_w / fr.rgb.shape[1]))
                    overlay.write(cv2.resize(fr.rgb, (ov_w, ov_h), interpolation=cv2.INTER_AREA),
                                  None if pred is None else cv2.resize(pred, (ov_w, ov_h),
                                                                       interpolation=cv2.INTER_NEAREST))
                else:
                    overlay.write(fr.rgb, pred)
            if pred is None:
                if tc is not None:
                    tc._prev = None  # a gap: no pair across it
                continue
            if tc is not None:
                try:
                    if scale > 1:  # at the working resolution (the flow there is what the graph used)
                        ws = (max(1, round(fr.rgb.shape[1] / scale)), max(1, round(fr.rgb.shape[0] / scale)))
                        tc.update(cv2.resize(pred, ws, interpolation=cv2.INTER_NEAREST),
                                  cv2.resize(fr.rgb, ws, interpolation=cv2.INTER_AREA))
                    else:
                        tc.update(pred, fr.rgb)
                except InputError as e:   # e.g. frames too small for DIS: no TC, the rest of the summary stands
                    tc_error, tc = str(e), None
            g = gt_files.get(fr.stem)
            if g is not None:
                gt = read_label_png(g, args.gt_format)
                p = pred if pred.shape == gt.shape else cv2.resize(pred, gt.shape[::-1],
                                                                   interpolation=cv2.INTER_NEAREST)
                cm.update(p, gt)
                st = col.stats.get(stem_ns[fr.stem])
                if st is not None and 'distance' in st:
                    by_dist.update(max(-1, int(st['distance'])), p, gt)
                n_gt += 1
    finally:
        if overlay is not None:
            overlay.close()

    def ms(v):
        return None if v is None else 1000.0 * v

    from vidseg_ros.ros.graph_bench import diag_float
    kf_wait = keyframe_wait_of(args)
    prop_diag = next((v for name, (_, _, v) in col.diagnostics.items() if name.endswith(': propagation_node')), {})
    # deterministic: frames wait for flow and network; wait: keyframe frames wait up to kf_wait while the
    # network's results come within it (the default); live: frames never wait for the network
    mode = 'deterministic' if args.deterministic else ('wait' if kf_wait > 0 else 'live')

    summary = {
        'input': src_desc,
        'frames_in': len(sent), 'frames_out': len(received), 'missing': len(missing),
        'missing_stems': missing[:50], 'unexpected_labels': extra,
        'input_rate_hz': (len(publish_times) - 1) / in_span if in_span else None,
        'output_rate_hz': (col.n_labels - 1) / rx_span if rx_span else None,
        'target_rate_hz': rate,
        'latency_ms': {'median': ms(_percentile(lat, 50)), 'p90': ms(_percentile(lat, 90)),
                       'max': ms(float(lat.max()) if len(lat) else None), 'n': int(len(lat))},
        'keyframes': {'count': n_kf, 'ratio': n_kf / len(sent) if sent else None,
                      'skipped_busy': n_busy, 'decisions': len(kf_dec), 'keyframe_results': col.kf_labels},
        'degraded_frames': degraded, 'degraded_reasons': dict(sorted(reasons.items())),
        'mean_confidence': float(np.mean(conf)) if conf else None,
        'miou': cm.miou() if cm is not None and n_gt else None,
        'pixel_accuracy': cm.pixel_accuracy() if cm is not None and n_gt else None,
        'iou': cm.summary(cs.names)['iou'] if cm is not None and n_gt else None,
        'gt_frames': n_gt, 'gt_dir': str(gt_dir) if gt_files else None,
        'miou_by_distance': ({str(d): v for d, v in by_dist.miou_by_distance().items()}
                             if by_dist is not None and by_dist.by_distance else None),
        'temporal_consistency': (tc.miou() if tc is not None and tc.pairs else None),
        'temporal_pairs': tc.pairs if tc is not None else 0, 'temporal_consistency_error': tc_error,
        'model': col.info.get('model') if col.info else args.model,
        'network_input_size': col.info.get('input_size') if col.info else None,
        'mode': mode, 'keyframe_wait_s': kf_wait,
        'keyframe_wait_max_s': propagation_param_of(args, 'keyframe_wait_max'),
        # the bound the node used last (it follows the measured keyframe delay up to keyframe_wait_max)
        'keyframe_wait_bound_s': diag_float(prop_diag.get('keyframe_wait_bound_s')),
        'schedule': args.schedule, 'scale': scale, 'class_set': cs.name, 'ros_domain_id': domain,
        'time_s': dict(times, evaluation=time.monotonic() - t_eval, total=time.monotonic() - t_all),
        'diagnostics': {name: {'level': lv, 'message': m, 'values': v} for name, (lv, m, v)
                        in sorted(col.diagnostics.items())},
        'outputs': {'labels': str(writer.dir), 'overlay': None if overlay is None else str(overlay.path),
                    'logs': str(out / 'logs'), 'summary': str(out / 'summary.json')},
    }
    write_json(out / 'summary.json', summary)
    return summary


def _wait_text(s: dict) -> str:
    """keyframe_wait as the node applied it: fixed, or adaptive up to keyframe_wait_max (and where it ended)."""
    wait, mx, bound = s['keyframe_wait_s'], s.get('keyframe_wait_max_s') or 0.0, s.get('keyframe_wait_bound_s')
    if mx <= wait:
        return f'keyframe_wait {wait:g} s'
    return f'keyframe_wait {wait:g}-{mx:g} s' + ('' if bound is None else f', {bound:.2f} s at the end')


def format_table(s: dict) -> str:
    def f(v, fmt='{:.1f}', unit=''):
        return 'n/a' if v is None else fmt.format(v) + unit

    lat = s['latency_ms']
    kf = s['keyframes']
    rows = [
        ('input', f"{s['input'].get('kind')} {s['input'].get('path')}"),
        ('model / schedule / D', f"{s['model']} / {s['schedule']} / {s['scale']} " + (
            f"({_wait_text(s)})" if s['mode'] == 'wait' else f"({s['mode']} mode)")),
        ('frames in / out', f"{s['frames_in']} / {s['frames_out']}"),
        ('missing', str(s['missing'])),
        ('rate in / out', f"{f(s['input_rate_hz'], '{:.2f}')} / {f(s['output_rate_hz'], '{:.2f}')} Hz"),
        ('latency median/p90/max', f"{f(lat['median'], '{:.0f}')} / {f(lat['p90'], '{:.0f}')} / "
                                   f"{f(lat['max'], '{:.0f}')} ms"),
        ('keyframes', f"{kf['count']} ({f(kf['ratio'] and 100 * kf['ratio'], '{:.0f}')} %), "
                      f"{kf['skipped_busy']} skipped busy"),
        ('degraded frames', str(s['degraded_frames']) + (
            ' (' + ', '.join(f'{k}: {v}' for k, v in s['degraded_reasons'].items()) + ')'
            if s.get('degraded_reasons') else '')),
        ('mean confidence', f(s['mean_confidence'], '{:.3f}')),
        ('mIoU vs ground truth', f"{f(s['miou'] and 100 * s['miou'], '{:.2f}', ' %')} ({s['gt_frames']} frames)"
         if s['miou'] is not None else 'n/a (no ground truth)'),
        ('pixel accuracy', f(s['pixel_accuracy'] and 100 * s['pixel_accuracy'], '{:.2f}', ' %')),
        ('temporal consistency', f(s['temporal_consistency'] and 100 * s['temporal_consistency'], '{:.2f}', ' %')
         if not s.get('temporal_consistency_error') else f"n/a ({s['temporal_consistency_error']})"),
        ('time input/startup/stream/eval/total',
         ' / '.join(f(s['time_s'].get(k)) for k in ('input', 'startup', 'streaming', 'evaluation', 'total')) + ' s'),
        ('outputs', s['outputs']['summary']),
    ]
    w = max(len(r[0]) for r in rows)
    return '\n'.join(f'{a:<{w}}  {b}' for a, b in rows)


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, OSError) and getattr(e, 'filename', None):
        msg = f'{e.strerror}: {e.filename}'
    return msg


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def _term(signum, frame):
        raise KeyboardInterrupt

    prev = signal.signal(signal.SIGTERM, _term)
    t0 = time.monotonic()
    try:
        s = run(args, log=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        print('interrupted: the graph was stopped', file=sys.stderr)
        return 130
    except GraphError as e:
        print(f'error: {_one_line(e)}', file=sys.stderr)
        return 1
    except (VidsegError, OSError) as e:
        print(f'error: {_one_line(e)}', file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, prev)
    s['time_s']['total'] = time.monotonic() - t0
    from vidseg_ros.core.io import write_json
    write_json(Path(s['outputs']['summary']), s)
    print(format_table(s), flush=True)
    if s['frames_out'] == 0:
        print(f'error: no labels received from the graph; see the logs in {s["outputs"]["logs"]}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
