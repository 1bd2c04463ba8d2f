"""Base class of the managed vidseg nodes (ros2/demos lifecycle_py style).

Subclasses declare parameters in ``declare_params()``, validate them and build their core objects and
ROS entities in ``configure()`` (raise a VidsegError to fail the transition: the reason is logged and
the node stays unconfigured), and may override ``activate()`` / ``deactivate()`` / ``teardown()``.
Entities made with ``self.pub`` / ``self.sub`` / ``self.timer`` are destroyed on cleanup/shutdown.
Parameters are read on configure; while the node is configured, a change is refused with the reason
except for the subclass's ``LIVE_PARAMS``, which apply at once (``common.ParamsMixin``).
"""
from __future__ import annotations

import collections
import threading
import time

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

from vidseg_ros.core.errors import ConfigError, VidsegError
from vidseg_ros.core.io import IMAGE_MSG
from vidseg_ros.ros.common import ParamsMixin, diag_level, diagnostic_status, reliable_qos
from vidseg_ros.ros import graph


def _who(info, unknown: str = 'a publisher') -> str:
    """The node behind a topic endpoint (its name is discovered a little after the endpoint)."""
    name = info.node_name
    if not name or name.startswith('_NODE_NAME_UNKNOWN'):
        return unknown
    return f'/{info.node_namespace.strip("/")}/{name}'.replace('//', '/')


def _qos_compatible(pub_qos, sub_qos) -> tuple:
    """rclpy's qos_check_compatible on a profile made here and one discovered on the graph: discovery
    reports an unset deadline / lifespan / lease as Infinite, a profile made here holds 0 (unset), which the
    check would take for a promise the other side lacks. Both are read as Infinite."""
    import copy
    from rclpy.duration import Duration, Infinite
    from rclpy.qos import qos_check_compatible
    profiles = []
    for qos in (pub_qos, sub_qos):
        q = copy.copy(qos)
        for attr in ('deadline', 'lifespan', 'liveliness_lease_duration'):
            if getattr(q, attr) == Duration():
                setattr(q, attr, Infinite)
        profiles.append(q)
    return qos_check_compatible(*profiles)


def _why(reason: str) -> str:
    """rclpy's qos_check_compatible reason without its 'ERROR:' prefix and trailing ';'."""
    return reason.replace('ERROR:', '').strip(' ;')


class VidsegLifecycleNode(ParamsMixin, LifecycleNode):
    CAMERA_SILENT_S = 5.0   # active this long without a camera publisher or message: WARN (camera_problem)
    MIXED_CAMERA_SWITCHES = 3   # frame_id switches within the recent frames that mean several cameras
    FIXED_PARAMS_HINT = ('set it while the node is unconfigured (deactivate, cleanup, set, configure, activate) '
                         'or at start-up')

    def __init__(self, node_name: str, **kwargs):
        super().__init__(node_name, **kwargs)
        self.active = False
        self._active_since = time.monotonic()
        self._camera = None
        self._camera_msg_t = None   # monotonic time the camera subscription last delivered a message
        self._recent_frame_ids = collections.deque(maxlen=50)   # of the camera frames (track_camera)
        self.configured = False   # parameters read and in use (configure succeeded, no cleanup since)
        self._pubs, self._subs, self._timers = [], [], []
        self._diag_pub = None
        self.lock = threading.RLock()
        self.declare('diagnostics_period', 1.0, 'seconds between /diagnostics messages (0 = off)',
                     float_range=(0.0, 3600.0))
        self.declare_params()
        self.watch_params()

    # ---------------------------------------------------------------- for subclasses
    def declare_params(self):
        pass

    def configure(self):
        raise NotImplementedError

    def activate(self):
        pass

    def deactivate(self):
        pass

    def teardown(self):
        pass

    def params_in_use(self) -> bool:
        return self.configured

    def diagnostics(self) -> list:
        """[(name_suffix, level, message, values)] for /diagnostics."""
        return []

    # ---------------------------------------------------------------- entity helpers
    def internal_prefix(self) -> str:
        """``graph.INTERNAL_PREFIX`` as resolved in this node's namespace (``/vidseg/``, ``/front/vidseg/``)."""
        return graph.in_namespace(self.get_namespace(), graph.node_topic(graph.INTERNAL_PREFIX))

    def pub(self, msg_type, topic, qos, overridable: bool = False):
        """A lifecycle publisher on one of the graph's topics (``graph.*_TOPIC``), in this node's namespace.

        ``overridable``: an output a consumer subscribes to. Its history, depth and reliability can then be
        set at start-up with ROS 2's standard QoS override parameters (read-only once declared), e.g.
        ``qos_overrides./semantic/labels.publisher.depth: 30``; the name is the resolved topic
        (``/front/semantic/labels`` in a namespace). A bad value fails the configure with the reason."""
        kw = {}
        if overridable:
            from rclpy.qos_overriding_options import QoSOverridingOptions
            kw['qos_overriding_options'] = QoSOverridingOptions.with_default_policies()
        default = (qos.history, qos.depth, qos.reliability)
        try:
            p = self.create_lifecycle_publisher(msg_type, graph.node_topic(topic), qos, **kw)
        except (RuntimeError, ValueError, TypeError) as e:   # rclpy's message does not name the topic
            raise ConfigError(f'QoS override for {self.resolve_topic_name(graph.node_topic(topic))}: {e}') from None
        q = p.qos_profile
        if (q.history, q.depth, q.reliability) != default:
            self.get_logger().info(f'{p.topic_name}: QoS overridden to {q.reliability.name.lower()}, '
                                   f'{q.history.name.lower()} {q.depth}')
        self._pubs.append(p)
        return p

    def sub(self, msg_type, topic, cb, qos, **kw):
        """A subscription to one of the graph's topics, in this node's namespace."""
        s = self.create_subscription(msg_type, graph.node_topic(topic), cb, qos, **kw)
        self._subs.append(s)
        return s

    def camera_sub(self, cb, qos):
        """The camera subscription (serialized Images, see :meth:`camera_message`), watched by
        :meth:`camera_problem` for what would keep every frame away."""
        from sensor_msgs.msg import Image

        def on_camera(raw):
            self._camera_msg_t = time.monotonic()   # every delivered message, readable or not
            cb(raw)
        self._camera = self.sub(Image, graph.CAMERA_TOPIC, on_camera, qos, raw=True)
        return self._camera

    def track_camera(self, frame_id: str):
        """Note the frame_id of a camera frame this node takes (:meth:`camera_problem`: several cameras)."""
        self._recent_frame_ids.append(frame_id)

    def camera_problem(self, now: float | None = None) -> str | None:
        """What is wrong with this node's camera input, in words, or None: frames of several cameras on
        the one topic (their frame_id switching back and forth: :meth:`track_camera`), or why no camera
        frame can arrive. The latter is checked on the ROS graph, so it also names what the log said once
        at discovery: no publisher on the topic (after ``CAMERA_SILENT_S`` active), publishers of another
        message type (e.g. a compressed camera remapped onto the topic), or a publisher whose QoS cannot
        match this subscription's (``input_qos``: a reliable subscription and a best-effort camera); and
        matching publishers from which no message came for ``CAMERA_SILENT_S`` (a paused camera, or large
        best-effort images that lose fragments on the network)."""
        from rclpy.qos import QoSCompatibility
        cam = self._camera
        if cam is None or not self.active:
            return None
        topic = cam.topic_name
        ids = list(self._recent_frame_ids)
        switches = sum(a != b for a, b in zip(ids, ids[1:]))
        if switches >= self.MIXED_CAMERA_SWITCHES:
            names = ', '.join(repr(i) for i in sorted(set(ids))[:4])
            return (f'the camera topic {topic} carries the frames of several cameras (frame_id {names}: '
                    f'{switches} switches in the last {len(ids)} frames); flow between two cameras means '
                    f'nothing, so frames are held or re-segmented: start one graph per camera, each in its '
                    f'namespace (namespace:=..., docs/ROS.md)')
        now = time.monotonic() if now is None else now
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            if now - self._active_since > self.CAMERA_SILENT_S:
                return (f'no publisher on the camera topic {topic} (is the camera driver running? is the topic '
                        f'remapped, e.g. camera_topic:=...?)')
            return None
        images = [i for i in infos if i.topic_type == IMAGE_MSG]
        if not images:
            others = sorted({f'{i.topic_type} ({_who(i)})' for i in infos})
            return (f'the camera topic {topic} is published as {", ".join(others)}, not {IMAGE_MSG}: no frame '
                    f'can arrive (a compressed camera needs decoding first: docs/ROS.md, "Compressed cameras")')
        bad = []
        for i in images:
            ok, why = _qos_compatible(i.qos_profile, cam.qos_profile)
            if ok == QoSCompatibility.ERROR:
                bad.append(f'{_who(i)}: {_why(why)}')
        matching = len(images) - len(bad)
        if not matching:
            return (f'the publisher(s) of the camera topic {topic} offer QoS this node\'s subscription cannot '
                    f'match, so no frame arrives ({"; ".join(bad)}); input_qos:=sensor_data takes both '
                    f'reliable and best-effort cameras')
        # matched, yet silent: since activation, or since the last message delivered in this activation
        last = self._camera_msg_t
        since = last if last is not None and last > self._active_since else self._active_since
        if now - since > self.CAMERA_SILENT_S:
            return (f'{matching} publisher(s) on the camera topic {topic} match this node\'s subscription, but '
                    f'no message came for {now - since:.0f} s (a paused camera or bag? a best-effort camera '
                    f'whose large images lose fragments on the network: reliable on both sides, or '
                    f'FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA; docs/ROS.md)')
        return None

    def subscriber_problems(self) -> list:
        """The subscribers of this node's outputs (topics outside the graph's internal ``/vidseg/`` and
        ``/diagnostics``) whose QoS its publisher cannot match, so that they get nothing (e.g. a subscriber
        asking for transient-local durability from a volatile topic), in words."""
        from rclpy.qos import QoSCompatibility
        out = []
        if not self.active:
            return out
        for p in self._pubs:
            topic = p.topic_name
            if topic.startswith(self.internal_prefix()) or topic == graph.DIAGNOSTICS_TOPIC:
                continue
            for i in self.get_subscriptions_info_by_topic(topic):
                ok, why = _qos_compatible(p.qos_profile, i.qos_profile)
                if ok == QoSCompatibility.ERROR:
                    out.append(f'{_who(i, "a subscriber")} on {topic} ({_why(why)})')
        return out

    def camera_message(self, raw: bytes):
        """A serialized camera Image (``sub(..., raw=True)``) -> its fields with the pixels a view of the
        bytes (``conversions.image_from_cdr``); None when it does not parse (counted in
        ``counts['bad_images']``, logged)."""
        from vidseg_ros.ros.conversions import ConversionError, image_from_cdr
        try:
            return image_from_cdr(raw)
        except ConversionError as e:
            self.counts['bad_images'] += 1
            self.get_logger().error(f'input image rejected: {e}', throttle_duration_sec=5.0)
            return None

    def timer(self, period, cb, **kw):
        """A timer on the steady clock: join deadlines and diagnostics keep running when /clock
        (use_sim_time) pauses."""
        from rclpy.clock import Clock, ClockType
        kw.setdefault('clock', Clock(clock_type=ClockType.STEADY_TIME))
        t = self.create_timer(period, cb, **kw)
        self._timers.append(t)
        return t

    def _destroy_entities(self):
        for t in self._timers:
            self.destroy_timer(t)
        for s in self._subs:
            self.destroy_subscription(s)
        for p in self._pubs:
            self.destroy_lifecycle_publisher(p)
        self._pubs, self._subs, self._timers = [], [], []
        self._diag_pub = None
        self._camera = self._camera_msg_t = None
        self._recent_frame_ids.clear()

    # ---------------------------------------------------------------- transitions
    def on_configure(self, state):
        try:
            self.validate_params()
            self.configure()
            period = float(self.get_parameter('diagnostics_period').value)
            if period > 0:
                from diagnostic_msgs.msg import DiagnosticArray
                self._diag_pub = self.pub(DiagnosticArray, graph.DIAGNOSTICS_TOPIC, reliable_qos(10))
                self.timer(period, self._publish_diagnostics)
        except VidsegError as e:
            self.get_logger().error(f'configure failed: {e}')
            self._safe_teardown()
            return TransitionCallbackReturn.FAILURE
        except Exception as e:  # unexpected: still fail the transition with the reason
            self.get_logger().error(f'configure failed: {type(e).__name__}: {e}')
            self._safe_teardown()
            return TransitionCallbackReturn.FAILURE
        self.configured = True
        self.get_logger().info('configured')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        ret = super().on_activate(state)  # enables the lifecycle publishers first
        with self.lock:
            self.active = True
            self._active_since = time.monotonic()
            self.activate()
        self.get_logger().info('activated')
        return ret

    def on_deactivate(self, state):
        with self.lock:
            self.active = False
        self.deactivate()  # not under the lock: it may join a worker that takes the lock
        self.get_logger().info('deactivated')
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self._safe_teardown()
        self.get_logger().info('cleaned up')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        with self.lock:
            self.active = False
        self._safe_teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state):
        self.get_logger().error(f'error in state {state.label}; cleaning up')
        with self.lock:
            self.active = False
        self._safe_teardown()
        return TransitionCallbackReturn.SUCCESS

    def _safe_teardown(self):
        self.configured = False
        try:
            self.teardown()
        except Exception as e:  # a failing teardown must not turn a clean FAILURE into an error state
            self.get_logger().error(f'teardown failed: {type(e).__name__}: {e}')
        finally:
            self._destroy_entities()

    def stop_workers(self):
        with self.lock:
            self.active = False
        self.teardown()

    def unmatched_links(self) -> list:
        """The graph-internal topics (``graph.INTERNAL_PREFIX``) this node publishes or subscribes to with no
        peer matched yet. Those topics are volatile: a message sent before its peer matched is lost to it,
        so a driver that must not lose a frame (the demo's deterministic mode, the graph tests) waits until
        every node reports none (``links_unmatched`` on /diagnostics)."""
        out = {f'pub:{p.topic_name}' for p in self._pubs
               if p.topic_name.startswith(self.internal_prefix()) and p.get_subscription_count() == 0}
        out |= {f'sub:{s.topic_name}' for s in self._subs
                if s.topic_name.startswith(self.internal_prefix()) and s.get_publisher_count() == 0}
        return sorted(out)

    def _publish_diagnostics(self):
        if self._diag_pub is None or not self.active:
            return
        from diagnostic_msgs.msg import DiagnosticArray
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        for suffix, level, message, values in self.diagnostics():
            if suffix == '':
                values = dict(values, **{graph.LINKS_UNMATCHED_KEY: ' '.join(self.unmatched_links())})
                # what the node cannot see from inside: its camera input and its consumers, on the graph
                problem, deaf = self.camera_problem(), self.subscriber_problems()
                values['camera_problem'] = problem or ''
                values['subscriber_problems'] = '; '.join(deaf)
                notes = [problem] if problem else []     # the camera's first: it explains what follows
                if message not in ('', 'running', 'OK'):
                    notes.append(message)
                if deaf:
                    notes.append(f'{len(deaf)} subscriber(s) ask for QoS this node does not offer and get '
                                 f'nothing: {"; ".join(deaf)} (docs/ROS.md, "Output QoS")')
                if problem or deaf:
                    level, message = max(level, diag_level('WARN')), '; '.join(notes)
            arr.status.append(diagnostic_status(graph.status_name(self.get_fully_qualified_name()) + suffix,
                                                self.get_name(), level,
                                                message, values))
        if arr.status:
            self._diag_pub.publish(arr)
