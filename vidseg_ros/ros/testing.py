"""Helpers for multi-process ROS tests and demos: start/stop node processes, a probe node.

Processes start in their own session (process group) and are always stopped with
``stop_processes`` (SIGINT, then SIGKILL of the whole group after a grace period).
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from vidseg_ros.ros import graph
from vidseg_ros.ros.runner import kill_process_group

REPO = Path(__file__).resolve().parents[2]


def node_env(extra: dict | None = None) -> dict:
    """Environment for child nodes: the caller's (ROS_DOMAIN_ID etc.) + the repo on PYTHONPATH."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('OMP_NUM_THREADS', '1')
    env.setdefault('PYTHONUNBUFFERED', '1')
    env.update(extra or {})
    return env


def start_process(cmd: list, log_path=None, env: dict | None = None) -> subprocess.Popen:
    out = open(log_path, 'wb') if log_path else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or node_env(),
                         start_new_session=True, cwd=str(REPO))
    p.log_path = log_path
    return p


def start_node(name: str, params: dict | None = None, remaps=(), log_dir=None, params_file=None,
               env=None) -> subprocess.Popen:
    """``python -m vidseg_ros.ros.<module>`` for a node of the graph with ``-p``/``-r`` arguments."""
    spec = next(s for s in graph.NODES if s.name == name)
    inv = graph.Invocation(spec.name, spec.executable, spec.module, spec.lifecycle,
                           ([params_file] if params_file else []) + [dict(params or {})], list(remaps))
    cmd = [sys.executable, '-m', spec.module] + graph.ros_args(inv)
    log = os.path.join(log_dir, f'{name}.log') if log_dir else None
    return start_process(cmd, log, env)


def stop_processes(procs, grace: float = 5.0):
    """Stop processes in the given order: SIGINT to each group, wait, then SIGKILL leftovers."""
    for p in procs:
        if p is None or p.poll() is not None:
            continue
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        kill_process_group(p)   # the group, including anything it spawned


def start_deterministic_graph(tmp_path, model: str, scale: int, schedule: str, extra_args=()):
    """The runner (``vidseg_graph``) set up to give the offline pipeline's labels frame for frame:
    reliable inputs, one keyframe-network thread, frames that wait for their flow and keyframe result.
    Returns (runner process, logs_text() -> the runner's and the nodes' logs, for assertion messages)."""
    tmp_path = Path(tmp_path)
    cmd = [sys.executable, '-m', 'vidseg_ros.ros.runner', '--model', model, '--schedule', schedule,
           *extra_args, '--log-dir', str(tmp_path / 'logs'), '--stop-timeout', '20',
           '--param', 'keyframe_node:num_threads=1',
           '--param', 'propagation_node:keyframe_wait=30.0', '--param', 'propagation_node:flow_timeout=30.0',
           '--param', 'propagation_node:refine_max_lag=0.0']   # no load shedding: every frame as offline
    for spec in graph.MANAGED_NODES:
        cmd += ['--param', f'{spec.name}:input_qos=reliable', '--param', f'{spec.name}:scale={scale}']
    runner = start_process(cmd, str(tmp_path / 'runner.log'))

    def logs_text():
        out = [(tmp_path / 'runner.log').read_text(errors='replace')]
        logs = tmp_path / 'logs'
        for f in sorted(logs.glob('*.log')) if logs.is_dir() else []:
            out.append(f'--- {f.name}\n' + f.read_text(errors='replace')[-3000:])
        return '\n'.join(out)
    return runner, logs_text


def read_log(p) -> str:
    path = getattr(p, 'log_path', None)
    if not path or not os.path.exists(path):
        return ''
    return Path(path).read_text(errors='replace')


class Probe:
    """A test-side node in its own context: publishers, recording subscribers, service calls."""

    def __init__(self, name: str = 'vidseg_probe'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.messages = collections.defaultdict(list)
        self.source_stamps = collections.defaultdict(list)
        self.cv = threading.Condition()
        self._stop = False
        self.last_call_failure = None   # call(): why the last call returned None
        self.lost_responses = 0         # call(): requests sent whose response never came
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if self._stop:
                    return
                raise

    def record(self, msg_type, topic, qos=None, key=None):
        from vidseg_ros.ros.common import reliable_qos
        key = key or topic

        def cb(msg, info):
            with self.cv:
                self.messages[key].append((time.monotonic(), msg))
                self.source_stamps[key].append(int(info['source_timestamp']))  # publisher's clock (ns)
                self.cv.notify_all()
        return self.node.create_subscription(msg_type, topic, cb, qos or reliable_qos(100))

    def publisher(self, msg_type, topic, qos=None):
        from vidseg_ros.ros.common import reliable_qos
        return self.node.create_publisher(msg_type, topic, qos or reliable_qos(100))

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.1))
        return True

    def count(self, key) -> int:
        with self.cv:
            return len(self.messages[key])

    def call(self, srv_type, name: str, request, timeout: float = 10.0, attempt_s: float = 0.0):
        """One service call; None when the service never appeared or never answered within ``timeout``
        (``self.last_call_failure`` says which). ``attempt_s`` > 0: for idempotent requests only, send it
        again on a fresh client each ``attempt_s`` until ``timeout``. A response can be lost for good in
        ROS 2's client/service discovery race (the server answers before its reply writer has matched the
        client's reply reader; rmw_fastrtps waits 100 ms for that, then drops the reply: ros2/ros2#1253,
        rmw_fastrtps#390; the manager's ``_get_state`` repeats its question for the same reason), most
        likely right after the server's process (re)started on a loaded machine."""
        deadline = time.monotonic() + timeout
        self.last_call_failure = None
        while True:
            t_end = deadline if attempt_s <= 0 else min(deadline, time.monotonic() + attempt_s)
            cli = self.node.create_client(srv_type, name)
            try:
                if not cli.wait_for_service(timeout_sec=max(t_end - time.monotonic(), 0.0)):
                    self.last_call_failure = f'{name}: service not available'
                else:
                    fut = cli.call_async(request)
                    ev = threading.Event()
                    fut.add_done_callback(lambda _f: ev.set())
                    if ev.wait(max(t_end - time.monotonic(), 0.0)):
                        return fut.result()
                    self.last_call_failure = f'{name}: no response'
                    self.lost_responses += 1
            finally:
                self.node.destroy_client(cli)
            if time.monotonic() >= deadline:
                return None

    def transition(self, node_name: str, transition_id: int, timeout: float = 30.0) -> bool:
        from lifecycle_msgs.srv import ChangeState
        req = ChangeState.Request()
        req.transition.id = transition_id
        res = self.call(ChangeState, f'/{node_name}/change_state', req, timeout)
        return bool(res is not None and res.success)

    def get_state(self, node_name: str, timeout: float = 5.0):
        """The node's lifecycle state label, or None; asked again every 3 s (a query: safe to repeat)."""
        from lifecycle_msgs.srv import GetState
        res = self.call(GetState, f'/{node_name}/get_state', GetState.Request(), timeout, attempt_s=3.0)
        return None if res is None else res.current_state.label

    def set_param(self, node_name: str, name: str, value, timeout: float = 10.0) -> tuple:
        """``ros2 param set``: (successful, reason) of setting one parameter (a Python bool / int / float / str)."""
        from rclpy.parameter import Parameter
        from rcl_interfaces.srv import SetParameters
        req = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        res = self.call(SetParameters, f'/{node_name}/set_parameters', req, timeout)
        if res is None:
            return False, self.last_call_failure
        return res.results[0].successful, res.results[0].reason

    def get_param(self, node_name: str, name: str, timeout: float = 10.0):
        """A parameter's current value (``ros2 param get``), or None when the node does not answer."""
        from rclpy.parameter import parameter_value_to_python
        from rcl_interfaces.srv import GetParameters
        res = self.call(GetParameters, f'/{node_name}/get_parameters', GetParameters.Request(names=[name]),
                        timeout, attempt_s=3.0)
        return None if res is None else parameter_value_to_python(res.values[0])

    def wait_subscribers(self, pub, n: int = 1, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_linked(self, timeout: float = 60.0, nodes=None) -> tuple:
        """Wait until every managed node (or ``nodes``) reports its internal topics matched on /diagnostics
        (``common.wait_linked``); returns (ready, what is missing). Call it before sending frames that
        must each get their flow and keyframe result."""
        from vidseg_ros.ros.common import wait_linked
        return wait_linked(self.node, timeout, nodes=nodes)

    def close(self):
        import rclpy
        self._stop = True
        self._thread.join(2.0)
        try:
            self.executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)
