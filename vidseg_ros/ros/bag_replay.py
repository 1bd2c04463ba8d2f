"""vidseg_bag_play: replay a rosbag2 (sqlite3 or mcap, read with ``rosbags``) into the vidseg graph and
optionally record the outputs to a new mcap bag -- ``ros2 bag`` is not needed.

    vidseg_bag_play BAG [--topic T] [--remap-to /camera/image_raw] [--decompress] [--rate R] [--clock] [--loop]
                    [--record OUT_BAG --record-topics /semantic/labels ...] [--paced /semantic/labels]

Messages are published as their recorded CDR bytes (exact), at the recorded pace times ``--rate``
(0 = as fast as possible). ``--decompress`` decodes sensor_msgs/CompressedImage topics and publishes them
as sensor_msgs/Image, the type the graph's camera topic takes (an undecodable message is skipped with a
warning and counted). ``--clock`` publishes /clock (rosgraph_msgs/Clock) with the bag time, for
nodes started with ``use_sim_time:=true``. ``--paced TOPIC`` waits, after each message, for one
message on TOPIC (deterministic replay, e.g. one /semantic/labels per frame); with ``--wait-linked`` the
replay starts only once every vidseg node reports its internal topics matched (no first frame loses its
flow or keyframe result).

KITTI raw drives: convert a drive with ``kitti2mcap`` (it writes rgb8 images on
``/kitti/camera_color_left/image_raw``), then either remap on replay::

    vidseg_bag_play kitti_2011_09_26_drive_0005_sync --topic /kitti/camera_color_left/image_raw \\
        --remap-to /camera/image_raw --clock --record out_bag --record-topics /semantic/labels

or keep the topic and start the graph with ``camera_topic:=/kitti/camera_color_left/image_raw``. A graph
in a namespace (one per camera): ``--namespace front`` for ``--wait-linked``, and its topics by their
full names (``--paced /front/semantic/labels --record-topics /front/semantic/labels``).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path

from vidseg_ros.core.errors import ConfigError, InputError, VidsegError
from vidseg_ros.core.io import COMPRESSED_IMAGE_MSG as COMPRESSED
from vidseg_ros.core.io import IMAGE_MSG as IMAGE
from vidseg_ros.ros import graph

KNOWN_TYPES = {
    graph.LABELS_TOPIC: 'sensor_msgs/msg/Image', graph.LABELS_COLOR_TOPIC: 'sensor_msgs/msg/Image',
    graph.CONFIDENCE_TOPIC: 'sensor_msgs/msg/Image', graph.CLASSES_TOPIC: 'std_msgs/msg/String',
    graph.DIAGNOSTICS_TOPIC: 'diagnostic_msgs/msg/DiagnosticArray', graph.FLOW_TOPIC: 'sensor_msgs/msg/Image',
    graph.KEYFRAME_LABELS_TOPIC: 'sensor_msgs/msg/Image', graph.KEYFRAME_PROBS_TOPIC: 'sensor_msgs/msg/Image',
    graph.CAMERA_TOPIC: 'sensor_msgs/msg/Image',
}


def known_type(topic: str):
    """The message type of one of the graph's topics, also under a namespace (/front/semantic/labels), or
    None (then the recorder asks the running graph)."""
    for name, msgtype in KNOWN_TYPES.items():
        if topic == name or (name != graph.DIAGNOSTICS_TOPIC and topic.endswith(name)):
            return msgtype
    return None


def ros_type(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    try:
        pkg, kind, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{pkg}.{kind}'), name)
    except (ValueError, ImportError, AttributeError):
        raise InputError(f'message type {msgtype} is not available in this ROS installation') from None


def open_bag(path):
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as e:  # pragma: no cover - rosbags is a requirement
        raise InputError(f'bag replay needs the rosbags package ({e})') from None
    p = Path(path)
    if not p.exists():
        raise InputError(f'bag not found: {p}')
    try:
        reader = AnyReader([p], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as e:
        raise InputError(f'cannot open rosbag {p}: {type(e).__name__}: {e}') from None
    return reader


def select_connections(reader, topics, decompress: bool = False):
    """Connections of the requested topics (default: the bag's sensor_msgs/msg/Image topics; with
    ``decompress``, its CompressedImage topics where it has no Image topic)."""
    conns = list(reader.connections)
    if topics:
        sel = [c for c in conns if c.topic in topics]
        missing = sorted(set(topics) - {c.topic for c in sel})
        if missing:
            raise InputError(f'topic(s) {missing} not in bag (topics: {sorted({c.topic for c in conns})})')
    else:
        sel = [c for c in conns if c.msgtype == IMAGE]
        compressed = sorted({c.topic for c in conns if c.msgtype == COMPRESSED})
        if not sel and decompress:
            sel = [c for c in conns if c.msgtype == COMPRESSED]
        if not sel:
            hint = (f'; CompressedImage topics {compressed}: play one with --decompress' if compressed else '')
            raise InputError(f'no sensor_msgs/msg/Image topic in bag (topics: {sorted({c.topic for c in conns})})'
                             + hint)
    return sel


def decompressed(reader, conn, raw):
    """A recorded sensor_msgs/CompressedImage (CDR) -> a sensor_msgs/Image with its header (``--decompress``);
    InputError when it does not deserialize or decode."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header
    from vidseg_ros.ros.conversions import compressed_to_image
    try:
        m = reader.deserialize(raw, conn.msgtype)
    except Exception as e:
        raise InputError(f'cannot deserialize: {type(e).__name__}: {e}') from None
    hdr = Header(stamp=Time(sec=int(m.header.stamp.sec), nanosec=int(m.header.stamp.nanosec)),
                 frame_id=str(m.header.frame_id))
    return compressed_to_image(m.format, m.data, hdr)


class Recorder:
    """Writes raw (CDR) messages of some topics to a new mcap bag with rosbags."""

    def __init__(self, node, path, topics, type_timeout=10.0):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
        from vidseg_ros.ros.common import latched_qos, reliable_qos
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f'record output {self.path} already exists')
        types = {}
        deadline = time.monotonic() + type_timeout
        for t in topics:
            types[t] = known_type(t)
            while types[t] is None:
                found = dict(node.get_topic_names_and_types())
                if t in found:
                    types[t] = found[t][0]
                elif time.monotonic() > deadline:
                    raise InputError(f'cannot find the type of record topic {t} (is the graph running?)')
                else:
                    time.sleep(0.1)
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.writer = Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.lock = threading.Lock()
        self.counts = {t: 0 for t in topics}
        self.conns = {}
        self.subs = []
        for t in topics:
            self.conns[t] = self.writer.add_connection(t, types[t], typestore=self.store)
            qos = latched_qos() if t.endswith(graph.CLASSES_TOPIC) else reliable_qos(100)   # latched there
            self.subs.append(node.create_subscription(ros_type(types[t]), t, self._cb(t), qos, raw=True))

    def _cb(self, topic):
        def cb(data):
            with self.lock:
                if self.writer is not None:
                    self.writer.write(self.conns[topic], time.time_ns(), bytes(data))
                    self.counts[topic] += 1
        return cb

    def close(self):
        with self.lock:
            if self.writer is not None:
                self.writer.close()
                self.writer = None


def build_parser():
    ap = argparse.ArgumentParser(prog='vidseg_bag_play', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 2)[2])
    ap.add_argument('bag', help='rosbag2 directory, .mcap or .db3')
    ap.add_argument('--topic', action='append', default=[], help='topic to play (repeatable; default: image topics)')
    ap.add_argument('--remap-to', default='', help='publish the (single) played topic under this name')
    ap.add_argument('--decompress', action='store_true',
                    help='publish sensor_msgs/CompressedImage topics as sensor_msgs/Image (decoded like '
                         "image_transport's compressed plugin: bgr8 / mono8), which the vidseg graph takes")
    ap.add_argument('--rate', type=float, default=1.0, help='speed factor (0 = as fast as possible)')
    ap.add_argument('--clock', action='store_true', help='publish /clock with the bag time')
    ap.add_argument('--clock-hz', type=float, default=50.0, help='/clock rate between messages')
    ap.add_argument('--loop', action='store_true', help='repeat until interrupted')
    ap.add_argument('--qos', choices=('reliable', 'sensor_data'), default='reliable', help='publisher QoS')
    ap.add_argument('--wait-subscribers', type=int, default=0, help='wait for this many subscribers first')
    ap.add_argument('--wait-linked', action='store_true',
                    help="wait until every vidseg node reports its internal topics matched on /diagnostics "
                         "(graph.links_ready): a frame played before may lose its flow or keyframe result")
    ap.add_argument('--namespace', default='', help="the graph's namespace (vidseg_graph --namespace), for "
                    '--wait-linked; give --remap-to, --paced and --record-topics with it, e.g. /front/semantic/labels')
    ap.add_argument('--wait-timeout', type=float, default=60.0,
                    help='seconds to wait for subscribers / linked nodes')
    ap.add_argument('--paced', default='', metavar='TOPIC',
                    help='after each message wait for one message on TOPIC (deterministic replay)')
    ap.add_argument('--paced-timeout', type=float, default=30.0)
    ap.add_argument('--record', default='', metavar='OUT_BAG', help='record --record-topics to this new mcap bag')
    ap.add_argument('--record-topics', nargs='+', default=[graph.LABELS_TOPIC], metavar='TOPIC')
    ap.add_argument('--tail', type=float, default=2.0, help='seconds to keep recording after the last message')
    return ap


def play(args, node, stop: threading.Event) -> dict:
    """Play the bag once (or in a loop) with ``node``; returns counts."""
    from rosgraph_msgs.msg import Clock
    from vidseg_ros.ros.common import reliable_qos, sensor_qos
    reader = open_bag(args.bag)
    try:
        conns = select_connections(reader, args.topic, args.decompress)
        if args.remap_to and len({c.topic for c in conns}) != 1:
            raise ConfigError('--remap-to needs exactly one played topic (use --topic)')
        decode = {c.topic for c in conns if c.msgtype == COMPRESSED and args.decompress}
        if args.remap_to and not args.decompress and conns[0].msgtype == COMPRESSED:
            raise ConfigError(f'{conns[0].topic} is {COMPRESSED}; the vidseg camera topic takes {IMAGE}: '
                              'add --decompress (or republish it with image_transport)')
        qos = reliable_qos(10) if args.qos == 'reliable' else sensor_qos(10)
        pubs = {}
        for c in conns:
            name = args.remap_to or c.topic
            if c.topic not in pubs:
                pubs[c.topic] = node.create_publisher(ros_type(IMAGE if c.topic in decode else c.msgtype), name, qos)
        clock_pub = node.create_publisher(Clock, '/clock', reliable_qos(10)) if args.clock else None
        if args.wait_subscribers > 0:
            deadline = time.monotonic() + args.wait_timeout
            while any(p.get_subscription_count() < args.wait_subscribers for p in pubs.values()):
                if time.monotonic() > deadline or stop.is_set():
                    raise InputError(f'no {args.wait_subscribers} subscriber(s) on '
                                     f'{[p.topic_name for p in pubs.values()]} within {args.wait_timeout}s')
                time.sleep(0.05)
        if args.wait_linked:
            from vidseg_ros.ros.common import wait_linked
            ns = graph.normalize_namespace(args.namespace)
            nodes = [graph.in_namespace(ns, s.name).lstrip('/') for s in graph.MANAGED_NODES]
            linked, missing = wait_linked(node, args.wait_timeout, stop, nodes=nodes)
            if not linked and not stop.is_set():
                raise InputError(f'the vidseg nodes are not linked within {args.wait_timeout}s ({missing})')
        paced = {'n': 0}
        cv = threading.Condition()
        if args.paced:
            def on_paced(_msg):
                with cv:
                    paced['n'] += 1
                    cv.notify_all()
            node.create_subscription(ros_type(known_type(args.paced) or 'sensor_msgs/msg/Image'), args.paced,
                                     on_paced, reliable_qos(100), raw=True)
        state = {'base': None, 'last': 0}   # base: (wall0, bag0) of the current pass
        clock_lock = threading.Lock()

        def publish_clock(ns):
            with clock_lock:  # monotonic within a pass, from both threads
                if clock_pub is not None and ns >= state['last']:
                    state['last'] = ns
                    m = Clock()
                    m.clock.sec, m.clock.nanosec = int(ns // 1_000_000_000), int(ns % 1_000_000_000)
                    clock_pub.publish(m)

        if clock_pub is not None and args.clock_hz > 0 and args.rate > 0:
            def clock_loop():  # bag time between messages (never past the next message)
                while not stop.wait(1.0 / args.clock_hz):
                    base, nxt = state['base'], state.get('next_ns')
                    if base is None or nxt is None:
                        continue
                    ns = base[1] + int((time.monotonic() - base[0]) * 1e9 * args.rate)
                    publish_clock(min(ns, nxt))
            threading.Thread(target=clock_loop, daemon=True).start()

        from tqdm import tqdm
        total = sum(c.msgcount for c in conns)
        played = undecodable = 0
        while not stop.is_set():
            wall0, bag0 = time.monotonic(), None
            with clock_lock:
                state['last'] = 0  # a new pass may start earlier in bag time
            for conn, t_ns, raw in tqdm(reader.messages(connections=conns), total=total, unit='msg',
                                        desc='replay', disable=not sys.stderr.isatty()):
                if stop.is_set():
                    break
                if bag0 is None:
                    bag0 = t_ns
                    state['base'] = (wall0, bag0)
                state['next_ns'] = t_ns
                if args.rate > 0:
                    due = wall0 + (t_ns - bag0) / 1e9 / args.rate
                    while not stop.is_set():
                        left = due - time.monotonic()
                        if left <= 0:
                            break
                        time.sleep(min(left, 0.05))
                publish_clock(t_ns)
                if conn.topic in decode:   # CompressedImage -> Image (--decompress)
                    try:
                        msg = decompressed(reader, conn, raw)
                    except InputError as e:   # counted, named, never the end of the replay
                        undecodable += 1
                        print(f'warning: {conn.topic} message at {t_ns} not played: {e}', file=sys.stderr)
                        continue
                    pubs[conn.topic].publish(msg)
                else:
                    pubs[conn.topic].publish(bytes(raw))
                played += 1
                if args.paced:
                    with cv:
                        if not cv.wait_for(lambda: paced['n'] >= played or stop.is_set(), args.paced_timeout):
                            raise InputError(f'no message on {args.paced} within {args.paced_timeout}s '
                                             f'after message {played}')
            if not args.loop:
                break
        state['base'] = None
        # reliable delivery of the last (large, fragmented) samples before the process may exit
        from rclpy.duration import Duration
        for pub in list(pubs.values()) + ([clock_pub] if clock_pub is not None else []):
            pub.wait_for_all_acked(Duration(seconds=5.0))
        return {'played': played, 'undecodable': undecodable}
    finally:
        reader.close()


def main(argv=None) -> int:
    import signal
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    args = build_parser().parse_args(argv)
    if args.rate < 0:
        print('error: --rate must be >= 0', file=sys.stderr)
        return 2
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('vidseg_bag_play')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    spin = threading.Thread(target=lambda: _spin(executor, stop), daemon=True)
    spin.start()
    recorder = None
    rc = 0
    try:
        if args.record:
            recorder = Recorder(node, args.record, args.record_topics)
        result = play(args, node, stop)
        if recorder is not None and args.tail > 0:
            time.sleep(args.tail)
        summary = f'played {result["played"]} messages'
        if result.get('undecodable'):
            summary += f'; {result["undecodable"]} undecodable CompressedImage message(s) not played'
        if recorder is not None:
            summary += f'; recorded {recorder.counts} to {recorder.path}'
        print(summary, flush=True)
    except KeyboardInterrupt:
        pass
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        rc = 2
    finally:
        stop.set()
        if recorder is not None:
            recorder.close()
        spin.join(2.0)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return rc


def _spin(executor, stop):
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # context shut down
            return


if __name__ == '__main__':
    sys.exit(main())
