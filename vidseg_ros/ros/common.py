"""Shared plumbing of the vidseg nodes: parameters, QoS, main(), rate/latency counters, diagnostics."""
from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time

from vidseg_ros.core.errors import ConfigError

# ROS message/rclpy imports are deferred to functions so that this module imports without ROS.


def sensor_qos(depth: int = 5):
    """Best effort, volatile, keep last ``depth``: the camera input (rclpy's sensor-data profile)."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10):
    """Reliable, volatile, keep last ``depth``: internal topics and outputs."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def latched_qos():
    """Reliable + transient local, depth 1: published once, delivered to late joiners."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def input_qos(name: str, depth: int):
    """QoS for the camera input by parameter value: 'sensor_data' (best effort) or 'reliable'."""
    if name == 'sensor_data':
        return sensor_qos(depth)
    if name == 'reliable':
        return reliable_qos(depth)
    raise ConfigError(f"input_qos must be 'sensor_data' or 'reliable', got {name!r}")


class ParamsMixin:
    """Declare parameters with descriptors and read them back as a dict.

    An invalid value given at start-up (wrong type or out of the declared range, e.g. ``-p scale:=0``)
    does not crash the process: the parameter is re-declared with dynamic typing and
    :meth:`validate_params` (called on configure) raises a ConfigError naming it.

    Parameters at run time (``ros2 param set``): a node reads its parameters once (on configure; the
    manager at start). While they are in use (:meth:`params_in_use`), a change to one of them would be
    stored and silently ignored, so it is refused with the reason, except for the node's ``LIVE_PARAMS``:
    those are checked (type, range, :meth:`check_live_param`) and applied at once (:meth:`apply_live_param`).
    Call :meth:`watch_params` after declaring them.
    """

    LIVE_PARAMS: tuple = ()
    # how to change the others (the lifecycle nodes: while unconfigured)
    FIXED_PARAMS_HINT = 'give it at start-up'

    def watch_params(self):
        self.add_on_set_parameters_callback(self._on_set_params_checked)

    def params_in_use(self) -> bool:
        """True while the values read from the parameters are in use (a configured node)."""
        return False

    def check_live_param(self, name, value):
        """Raise a VidsegError if ``value`` cannot be applied to live parameter ``name``."""

    def apply_live_param(self, name, value):
        """Apply a checked value of live parameter ``name`` to the running node."""
        if isinstance(getattr(self, 'cfg', None), dict) and name in self.cfg:
            self.cfg[name] = value

    def _on_set_params_checked(self, params):
        from rcl_interfaces.msg import SetParametersResult
        from vidseg_ros.core.errors import VidsegError
        specs = getattr(self, '_param_specs', {})
        ours = [p for p in params if p.name in specs]     # not rclpy's own (use_sim_time, ...)
        in_use = self.params_in_use()
        fixed = [p.name for p in ours if p.name not in self.LIVE_PARAMS]
        if in_use and fixed:
            live = ', '.join(self.LIVE_PARAMS) or 'none'
            return SetParametersResult(successful=False, reason=(
                f'{", ".join(fixed)}: read once, so a change now would be ignored; {self.FIXED_PARAMS_HINT} '
                f'(parameters that apply at run time: {live})'))
        live = [p for p in ours if p.name in self.LIVE_PARAMS]
        try:
            for p in live:
                self._check_value(p.name, p.value)
                self.check_live_param(p.name, p.value)
        except VidsegError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if in_use:
            for p in live:
                self.apply_live_param(p.name, p.value)
                self.get_logger().info(f'parameter {p.name} -> {p.value!r} (applied)')
        return SetParametersResult(successful=True)

    def declare(self, name, default, description, read_only=False, **ranges):
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
        from rclpy.parameter import Parameter
        if not hasattr(self, '_param_specs'):
            self._param_specs = {}
        d = ParameterDescriptor(description=description, read_only=read_only)
        if 'int_range' in ranges:
            lo, hi = ranges['int_range']
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        if 'float_range' in ranges:
            lo, hi = ranges['float_range']
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        value = Parameter.Type.STRING_ARRAY if isinstance(default, list) and not default else default
        self._param_specs[name] = (default, ranges.get('int_range') or ranges.get('float_range'))
        try:
            self.declare_parameter(name, value, d)
        except Exception:  # invalid start-up override: keep the node alive, fail on configure
            d2 = ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=True)
            self.declare_parameter(name, value, d2)

    def unknown_params(self) -> list:
        """Parameters given for this node (params file / ``-p``) that it does not declare (typos)."""
        overrides = getattr(self, '_parameter_overrides', None) or {}
        return sorted(n for n in overrides
                      if not self.has_parameter(n) and not n.startswith('qos_overrides.'))

    def validate_params(self):
        """Raise ConfigError for unknown parameters, or the first declared parameter with a wrong type or
        out of range."""
        unknown = self.unknown_params()
        if unknown:
            known = ', '.join(sorted(getattr(self, '_param_specs', {})))
            raise ConfigError(f'unknown parameter{"s" if len(unknown) > 1 else ""} {", ".join(unknown)} '
                              f'(known: {known})')
        for name in getattr(self, '_param_specs', {}):
            self._check_value(name, self.get_parameter(name).value)

    def _check_value(self, name, v):
        """Raise ConfigError when ``v`` has the wrong type for parameter ``name`` or is out of its range."""
        default, rng = self._param_specs[name]
        if isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif isinstance(default, str):
            ok = isinstance(v, str)
        else:
            ok = isinstance(v, (list, tuple))
        if not ok:
            raise ConfigError(f'parameter {name} must be {type(default).__name__}, got {v!r}')
        if rng is not None and not (rng[0] <= v <= rng[1]):
            raise ConfigError(f'parameter {name} must be in [{rng[0]}, {rng[1]}], got {v!r}')

    def params(self, *names) -> dict:
        return {n: self.get_parameter(n).value for n in names}


def check(cond: bool, message: str):
    if not cond:
        raise ConfigError(message)


class RateCounter:
    """Counts events and reports the rate over a sliding window (seconds)."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self.times = collections.deque()
        self.total = 0

    def tick(self, now: float | None = None):
        now = time.monotonic() if now is None else now
        self.total += 1
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        span = max(now - self.times[0], 1e-6)
        return (len(self.times) - 1) / span if span > 0 else 0.0


class LatencyStats:
    """Running mean / max and the last value of a latency (seconds)."""

    def __init__(self, window: int = 100):
        self.values = collections.deque(maxlen=window)

    def add(self, v: float):
        self.values.append(float(v))

    def summary(self) -> dict:
        if not self.values:
            return {'mean_ms': 0.0, 'max_ms': 0.0, 'last_ms': 0.0}
        v = list(self.values)
        return {'mean_ms': 1000 * sum(v) / len(v), 'max_ms': 1000 * max(v), 'last_ms': 1000 * v[-1]}


def diagnostic_status(name: str, hardware_id: str, level: int, message: str, values: dict):
    """diagnostic_msgs/DiagnosticStatus with stringified key/values."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    st = DiagnosticStatus(name=name, hardware_id=hardware_id, message=message)
    st.level = bytes([level]) if isinstance(st.level, bytes) else level
    st.values = [KeyValue(key=str(k), value=(f'{v:.4g}' if isinstance(v, float) else str(v)))
                 for k, v in values.items()]
    return st


def diag_level(name: str) -> int:
    from diagnostic_msgs.msg import DiagnosticStatus
    return int.from_bytes(getattr(DiagnosticStatus, name), 'little') \
        if isinstance(getattr(DiagnosticStatus, name), bytes) else int(getattr(DiagnosticStatus, name))


def to_json(obj) -> str:
    return json.dumps(obj, separators=(',', ':'), sort_keys=True)


MALLOC_MMAP_THRESHOLD = 32 << 20   # glibc M_MMAP_THRESHOLD for node processes (bytes)
MALLOC_TRIM_THRESHOLD = 16 << 20   # glibc M_TRIM_THRESHOLD


def tune_malloc() -> bool:
    """Keep freed large buffers in the process heap (glibc ``mallopt``) instead of returning them to the
    kernel: every message of a node is a fresh 0.5-1.5 MB buffer (DDS receive, rclpy conversion,
    numpy), and with glibc's defaults each one is a new mapping whose pages fault in and are zeroed
    again (measured: receiving a 960x540 rgb8 image cost 5.3 ms of CPU, ~2 ms with this). Memory
    stays bounded: each malloc arena keeps at most ``MALLOC_TRIM_THRESHOLD`` of free space.
    ``VIDSEG_MALLOC_TUNE=0`` turns it off; no-op where glibc is not the C library. Returns whether it
    was applied."""
    import ctypes
    import os
    if os.environ.get('VIDSEG_MALLOC_TUNE', '1') == '0' or not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


PARENT_PID_ENV = 'VIDSEG_PARENT_PID'   # set by the runner for the processes it starts


def die_with_parent() -> None:
    """In a process started by the runner (``PARENT_PID_ENV`` set): get SIGTERM when the runner dies,
    even by SIGKILL (Linux ``PR_SET_PDEATHSIG``), and stop at once if it is already gone. The nodes
    run in their own sessions, so without this a killed runner would leave them running."""
    ppid = os.environ.get(PARENT_PID_ENV)
    if not ppid or not sys.platform.startswith('linux'):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError, ValueError):
        return
    if str(os.getppid()) != ppid:   # the runner died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def enable_stack_dumps() -> None:
    """SIGUSR1 writes the stack of every thread to stderr (the node's log): the runner asks for it
    before it SIGKILLs a process that did not stop (``runner.kill_process_group``), and so can you
    (``kill -USR1 <pid>``) on a node that hangs."""
    import faulthandler
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, RuntimeError):   # no SIGUSR1 (Windows) or stderr not a file
        pass


def proc_stat(pid, proc: str = '/proc') -> list | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, is index 0); None
    when it cannot be read (gone, another host's pid)."""
    try:
        with open(f'{proc}/{pid}/stat', 'rb') as f:
            return f.read().rpartition(b')')[2].split()
    except OSError:
        return None


STARTUP_TIMEOUT_ENV = 'VIDSEG_STARTUP_TIMEOUT'   # seconds; 0 = no startup watchdog
DEFAULT_STARTUP_TIMEOUT_S = 60.0


def startup_timeout() -> float:
    """The node start-up watchdog's bound (``VIDSEG_STARTUP_TIMEOUT``, default 60 s; 0 = off)."""
    text = os.environ.get(STARTUP_TIMEOUT_ENV, '').strip()
    try:
        v = float(text) if text else DEFAULT_STARTUP_TIMEOUT_S
    except ValueError:
        v = DEFAULT_STARTUP_TIMEOUT_S
    return v if v >= 0 else DEFAULT_STARTUP_TIMEOUT_S


def run_node(factory, args=None, multithreaded: bool = False) -> int:
    """main() body of every node: init, spin, clean shutdown on Ctrl-C / SIGTERM / external shutdown.

    Start-up watchdog: a process that has not created its node within ``startup_timeout()`` (rclpy.init
    plus the node's constructor, which only declares parameters: models load in configure) writes the
    stack of every thread to stderr (its log) and exits with status 1, so that the runner or launch
    ``respawn`` starts it again. A node that hangs there (seen: Fast DDS failing to open its shared-memory
    ports, RELIABILITY.md) has no services and no /diagnostics, so nothing else could end it. The dump
    comes from faulthandler's own C thread, which needs no GIL: it works while a C call holds it."""
    import faulthandler

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor

    tune_malloc()
    enable_stack_dumps()
    die_with_parent()
    args = sys.argv if args is None else args
    bound = startup_timeout()
    if bound > 0:
        faulthandler.dump_traceback_later(bound, exit=True)
    node = None
    rc = 0
    try:
        rclpy.init(args=args)
        node = factory()
        faulthandler.cancel_dump_traceback_later()
        executor = MultiThreadedExecutor(num_threads=3) if multithreaded else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        rc = 2
    finally:
        faulthandler.cancel_dump_traceback_later()
        if node is not None:
            try:
                stop = getattr(node, 'stop_workers', None)
                if stop:
                    stop()
                node.destroy_node()
            except Exception:
                pass
        rclpy.try_shutdown()
    return rc


class Worker:
    """A single background thread that processes the newest submitted item (older ones are skipped)."""

    def __init__(self, fn, name='worker', on_skip=None):
        self.fn = fn
        self.on_skip = on_skip
        self.name = name
        self._cv = threading.Condition()
        self._item = None
        self._has = False
        self._stop = False
        self.busy = False
        self.skipped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> None:
        with self._cv:
            replaced = self._item if self._has else None
            if self._has:
                self.skipped += 1
            self._item, self._has = item, True
            self._cv.notify()
        if replaced is not None and self.on_skip is not None:
            self.on_skip(replaced)

    def idle(self) -> bool:
        with self._cv:
            return not self._has and not self.busy

    def _loop(self):
        while True:
            with self._cv:
                while not self._has and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                item, self._item, self._has = self._item, None, False
                self.busy = True
            try:
                self.fn(item)
            except Exception as e:  # keep the worker alive; the callback logs its own errors
                self.errors += 1
                print(f'{self.name}: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
            finally:
                with self._cv:
                    self.busy = False
                    self._cv.notify_all()

    def stop(self, timeout: float = 5.0):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def wait_linked(node, timeout: float, stop=None, nodes=None) -> tuple:
    """Wait until every managed vidseg node (or ``nodes``) reports its internal topics matched on /diagnostics
    (``graph.links_ready``; each node publishes every ``diagnostics_period``, 1 s). ``node`` must be spun
    by someone else (an executor thread); ``stop`` (a threading.Event) ends the wait early. Returns
    (ready, what is missing)."""
    import threading
    import time
    from diagnostic_msgs.msg import DiagnosticArray
    from vidseg_ros.ros import graph
    latest, lock = {}, threading.Lock()

    def on_diag(msg):
        with lock:
            for st in msg.status:
                latest[st.name] = {kv.key: kv.value for kv in st.values}
    sub = node.create_subscription(DiagnosticArray, graph.DIAGNOSTICS_TOPIC, on_diag, reliable_qos(50))
    try:
        deadline = time.monotonic() + timeout
        while True:
            with lock:
                ready, missing = graph.links_ready(latest, nodes)
            if ready or time.monotonic() > deadline or (stop is not None and stop.is_set()):
                return ready, missing
            time.sleep(0.1)
    finally:
        node.destroy_subscription(sub)
