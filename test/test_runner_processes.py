"""The runner's process hygiene: children die with a killed runner; a process about to be SIGKILLed first
writes the stacks of its threads to its log (what a hang leaves behind); a node process that hangs before
its node exists ends itself (start-up watchdog)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from vidseg_ros.ros import graph
from vidseg_ros.ros.runner import Graph, kill_process_group

CHILD = [sys.executable, '-c', textwrap.dedent('''
    import time
    from vidseg_ros.ros.common import die_with_parent, enable_stack_dumps
    enable_stack_dumps()
    die_with_parent()
    print('child ready', flush=True)
    time.sleep(120)
''')]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f'/proc/{pid}/stat') as f:   # a zombie (exited, not yet reaped by init) counts as gone
        return f.read().split(')')[-1].split()[0] != 'Z'


def _wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_children_die_with_a_killed_runner(tmp_path):
    """A runner killed with SIGKILL cannot stop its children, which run in their own sessions: each child
    asked the kernel for SIGTERM on the runner's death (common.die_with_parent), so none is left over."""
    script = textwrap.dedent(f'''
        import time
        from vidseg_ros.ros import graph
        from vidseg_ros.ros.runner import Graph
        inv = graph.Invocation('child_node', 'child_node', 'x', False)
        Graph([(inv, {CHILD!r})], log_dir={str(tmp_path)!r}, respawn=False).start()
        time.sleep(120)
    ''')
    runner = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        line = runner.stdout.readline()
        assert 'started child_node (pid ' in line, line
        child = int(line.split('pid ')[1].rstrip(')\n'))
        assert _wait_for(lambda: 'child ready' in (tmp_path / 'child_node.log').read_text(), 20)
        assert _alive(child)
        runner.kill()
        runner.wait(10)
        assert _wait_for(lambda: not _alive(child), 10), 'child outlived its SIGKILLed runner'
    finally:
        runner.kill()
        runner.wait(10)


def test_a_process_that_will_be_killed_dumps_its_stacks_first(tmp_path):
    inv = graph.Invocation('child_node', 'child_node', 'x', False)
    g = Graph([(inv, CHILD)], log_dir=str(tmp_path), respawn=False)
    g.start()
    p = g.procs['child_node']
    try:
        log = tmp_path / 'child_node.log'
        assert _wait_for(lambda: 'child ready' in log.read_text(), 20)
        kill_process_group(p)
        assert p.returncode == -signal.SIGKILL
        text = log.read_text()
        assert 'most recent call first' in text and 'File "<string>"' in text, text   # the child's sleep
    finally:
        kill_process_group(p, dump_first=False)


NODE_MAIN = textwrap.dedent('''
    import sys, time
    from vidseg_ros.ros.common import run_node

    def factory():
        if sys.argv[1] == 'hang':   # a node constructor that never returns (as under a Fast DDS port hang)
            time.sleep(120)
        import rclpy
        from rclpy.node import Node
        node = Node('watchdog_probe')
        node.create_timer(float(sys.argv[2]), lambda: rclpy.try_shutdown())
        return node

    sys.exit(run_node(factory, ['x']))
''')


def test_a_node_that_hangs_before_it_exists_is_ended_by_the_startup_watchdog(ros_domain):
    """run_node's watchdog: a process that has not created its node within VIDSEG_STARTUP_TIMEOUT writes its
    threads' stacks and exits 1 (so that the runner / launch respawn starts it again); one that has created
    its node runs on past the bound."""
    env = dict(os.environ, VIDSEG_STARTUP_TIMEOUT='1.5')
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, '-c', NODE_MAIN, 'hang'], env=env, capture_output=True, text=True,
                         timeout=60)
    took = time.monotonic() - t0
    assert res.returncode == 1, res
    assert 'Timeout (0:00:01' in res.stderr and 'in factory' in res.stderr, res.stderr   # where it hung
    assert took < 30
    # a node that came up is not touched: it spins past the bound and stops cleanly (status 0)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, '-c', NODE_MAIN, 'ok', '3.5'], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and 'Timeout' not in res.stderr, res
    assert time.monotonic() - t0 > 3.5


def test_startup_timeout_setting(monkeypatch):
    from vidseg_ros.ros.common import DEFAULT_STARTUP_TIMEOUT_S, startup_timeout
    for text, want in (('', DEFAULT_STARTUP_TIMEOUT_S), ('0', 0.0), ('12.5', 12.5), ('x', DEFAULT_STARTUP_TIMEOUT_S),
                       ('-3', DEFAULT_STARTUP_TIMEOUT_S)):
        monkeypatch.setenv('VIDSEG_STARTUP_TIMEOUT', text)
        assert startup_timeout() == want, text
