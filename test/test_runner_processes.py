"""The runner's process hygiene: children die with a killed runner; a process about to be SIGKILLed first
writes the stacks of its threads to its log (what a hang leaves behind)."""
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
