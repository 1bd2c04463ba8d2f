"""vidseg_graph: start the vidseg graph without ``ros2 launch``.

Starts the same processes as ``launch/pipeline.launch.py`` (both read ``vidseg_ros.ros.graph``): the
managed nodes with ``--params-file <config> -p ... -r /camera/image_raw:=<camera_topic>``, then the
lifecycle manager (autostart). Dead nodes are respawned (the manager re-activates them). Ctrl-C /
SIGTERM: the manager deactivates the nodes (reverse order), then the processes are stopped in reverse
order (SIGINT, then SIGKILL of each process group after a grace period).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from vidseg_ros.core.errors import ConfigError, VidsegError
from vidseg_ros.ros import graph, shm
from vidseg_ros.ros.common import PARENT_PID_ENV, enable_stack_dumps


STACK_DUMP_WAIT_S = 0.5   # how long a process that will be SIGKILLed gets to write its stacks


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='vidseg_graph', description=__doc__.splitlines()[0])
    ap.add_argument('--camera-topic', default=graph.CAMERA_TOPIC, help='camera Image topic')
    ap.add_argument('--namespace', default='', help='ROS namespace of the graph (its nodes and topics, not '
                    '/diagnostics), e.g. front -> /front/semantic/labels; one graph per camera')
    ap.add_argument('--config', default='', help='parameters YAML (default: the package config/pipeline.yaml)')
    ap.add_argument('--use-sim-time', action='store_true', help='use /clock (bag replay with --clock)')
    ap.add_argument('--model', default='', help='keyframe model (registry name, yaml or file)')
    ap.add_argument('--weights', default='')
    ap.add_argument('--device', default='')
    ap.add_argument('--schedule', default='', help="keyframe schedule, e.g. 'fixed:5'")
    ap.add_argument('--operating-point', default='', help='EVS operating point preset')
    ap.add_argument('--temporal-mode', default='', choices=('',) + graph.NODE_TEMPORAL_MODES,
                    help='propagation mode of the propagation node (default: from the config)')
    ap.add_argument('--two-sided', action='store_true',
                    help=f'also publish {graph.LABELS_TWO_SIDED_TOPIC}: each frame delayed until the next keyframe '
                         'and fused with it carried back (core/bidirectional.py)')
    ap.add_argument('--two-sided-max-wait', default='', metavar='SECONDS',
                    help='with --two-sided: seconds a frame may wait for the next keyframe before it goes out '
                         'forward-only on the two-sided topic (0 = no time bound; default: from the config)')
    ap.add_argument('--keyframe-wait', default='', metavar='SECONDS',
                    help='seconds a frame announced as a keyframe waits for the network (default: from the config, '
                         '0.3: the offline accuracy while results come within it; 0 = never: live mode, lowest '
                         'latency)')
    ap.add_argument('--param', action='append', default=[], metavar='NODE:NAME=VALUE',
                    help='extra parameter override (repeatable), e.g. keyframe_node:input_size=512x256')
    ap.add_argument('--executables', action='store_true',
                    help='run the installed node executables (lib/vidseg_ros/<exe>) instead of python -m')
    ap.add_argument('--no-manager', action='store_true', help='start the nodes only (unconfigured)')
    ap.add_argument('--no-respawn', action='store_true', help='do not restart nodes that exit')
    ap.add_argument('--log-dir', default='', help='write each process output to <dir>/<node>.log')
    ap.add_argument('--no-shm-clean', action='store_true',
                    help='do not remove the /dev/shm data segments of killed Fast DDS participants (at start '
                         'and after a node was respawned; a live participant\'s files and port files are '
                         'never touched)')
    ap.add_argument('--stop-timeout', type=float, default=10.0, help='seconds for a clean stop')
    return ap


def parse_param(text: str):
    """'node:name=value' -> (node, name, value parsed as YAML)."""
    import yaml
    node, sep, rest = text.partition(':')
    name, eq, value = rest.partition('=')
    if not sep or not eq or not node or not name:
        raise ConfigError(f'--param must look like node:name=value, got {text!r}')
    if node not in [s.name for s in graph.NODES]:
        raise ConfigError(f'--param {text!r}: unknown node {node!r} (nodes: {", ".join(s.name for s in graph.NODES)})')
    try:
        val = yaml.safe_load(value)
    except yaml.YAMLError:
        val = value
    return node, name, value if val is None else val


def executable_path(name: str) -> str | None:
    """lib/vidseg_ros/<name> under an ament prefix, else <name> on PATH."""
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        cand = os.path.join(prefix, 'lib', graph.PACKAGE, name)
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which(name)


def commands(args) -> list:
    """[(Invocation, argv)] in start order (managed nodes, then the manager)."""
    invs = graph.invocations(camera_topic=args.camera_topic, config=args.config, use_sim_time=args.use_sim_time,
                             model=args.model, weights=args.weights, device=args.device,
                             schedule=args.schedule, operating_point=args.operating_point,
                             temporal_mode=args.temporal_mode, two_sided='true' if args.two_sided else '',
                             two_sided_max_wait_s=args.two_sided_max_wait, keyframe_wait=args.keyframe_wait,
                             namespace=args.namespace)
    by_name = {i.name: i for i in invs}
    for text in args.param:
        node, name, val = parse_param(text)
        by_name[node].parameters[-1][name] = val
    out = []
    for inv in invs:
        if args.no_manager and inv.name == graph.MANAGER.name:
            continue
        if args.executables:
            exe = executable_path(inv.executable)
            if exe is None:
                raise ConfigError(f'executable {inv.executable} not found (install the package or drop --executables)')
            argv = [exe]
        else:
            argv = [sys.executable, '-m', inv.module]
        out.append((inv, argv + graph.ros_args(inv)))
    return out


def kill_process_group(p: subprocess.Popen, wait: float = 2.0, dump_first: bool = True) -> None:
    """SIGKILL the process group of ``p`` (the process and anything it spawned), then reap it. A process
    still running is first asked for the stack of its threads (SIGUSR1: every node registers
    ``faulthandler`` for it, the dump goes to its log), so a hang leaves a trace."""
    if dump_first and p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGUSR1)
            p.wait(STACK_DUMP_WAIT_S)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        pass


class Graph:
    """The running processes; ``stop()`` is idempotent."""

    def __init__(self, cmds, log_dir='', respawn=True, max_respawns=5, shm_clean=False):
        self.cmds = cmds
        self.shm_clean = shm_clean
        self.shm_due = None     # monotonic time of the next stale shared-memory pass (after a respawn)
        self.log_dir = log_dir
        self.respawn = respawn
        self.max_respawns = max_respawns
        self.procs = {}
        self.respawns = {}
        self.stopping = False

    def _start(self, inv, argv):
        out = subprocess.DEVNULL if self.log_dir == '-' else None
        if self.log_dir and self.log_dir != '-':
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f'{inv.name}.log'), 'ab')
        # each child runs in its own session (a Ctrl-C in the terminal reaches only the runner, which stops
        # the graph in order) and dies with the runner, even when the runner is SIGKILLed (PARENT_PID_ENV)
        env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                             start_new_session=True, env=env)
        self.procs[inv.name] = p
        return p

    def clean_shm(self):
        """Remove the Fast DDS data segments of killed participants (``ros.shm``). A node that crashed
        leaves its segment (35 MB with the large-data profile) until reboot; piled up, they coincided with
        new participants failing (RELIABILITY.md). Files younger than ``shm.MIN_AGE_S`` wait for a later pass."""
        self.shm_due = None
        if not self.shm_clean:
            return None
        rep = shm.clean_stale_fastdds_shm()
        if rep.removed or rep.errors:
            print(f'[vidseg_graph] removed {rep.summary()}', flush=True)
        if rep.too_young:
            self.shm_due = time.monotonic() + shm.MIN_AGE_S + 1
        return rep

    def start(self):
        self.clean_shm()
        for inv, argv in self.cmds:
            self._start(inv, argv)
            print(f'[vidseg_graph] started {inv.name} (pid {self.procs[inv.name].pid})', flush=True)

    def poll(self):
        """Respawn managed nodes that exited (the manager re-activates them)."""
        for inv, argv in self.cmds:
            p = self.procs.get(inv.name)
            if p is None or p.poll() is None or self.stopping:
                continue
            n = self.respawns.get(inv.name, 0)
            if not self.respawn or n >= self.max_respawns:
                continue
            print(f'[vidseg_graph] {inv.name} exited with {p.returncode}; respawning ({n + 1}/{self.max_respawns})',
                  flush=True)
            self.respawns[inv.name] = n + 1
            self._start(inv, argv)
            if self.shm_clean and self.shm_due is None:   # the dead process's files, once they are old enough
                self.shm_due = time.monotonic() + shm.MIN_AGE_S + 1
        if self.shm_due is not None and time.monotonic() >= self.shm_due and not self.stopping:
            self.clean_shm()

    def stop(self, timeout: float = 10.0):
        if self.stopping:
            return
        self.stopping = True
        order = [inv.name for inv, _ in reversed(self.cmds)]
        # the manager first (it deactivates the nodes), then the nodes in reverse order
        if graph.MANAGER.name in order:
            order.remove(graph.MANAGER.name)
            order.insert(0, graph.MANAGER.name)
        for name in order:
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout if name == graph.MANAGER.name else min(timeout, 5.0))
                except subprocess.TimeoutExpired:
                    pass
            kill_process_group(p)
            print(f'[vidseg_graph] stopped {name} ({p.returncode})', flush=True)


def main(argv=None) -> int:
    enable_stack_dumps()
    args = build_parser().parse_args(argv)
    os.environ.update(graph.fastdds_profile_env())   # children inherit it
    try:
        cmds = commands(args)
    except VidsegError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    g = Graph(cmds, log_dir=args.log_dir, respawn=not args.no_respawn, shm_clean=not args.no_shm_clean)
    stop = {'flag': False}

    def _on_signal(signum, frame):
        stop['flag'] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        g.start()
        while not stop['flag']:
            g.poll()
            mgr = g.procs.get(graph.MANAGER.name)
            if mgr is not None and mgr.poll() is not None and mgr.returncode != 0:
                print(f'[vidseg_graph] lifecycle manager exited with {mgr.returncode}', flush=True)
                break
            time.sleep(0.2)
    finally:
        g.stop(args.stop_timeout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
