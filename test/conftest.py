import os

import pytest

from vidseg_ros.core.paths import has_shared, shared_dir


@pytest.fixture(scope='session')
def shared():
    """Path to ../shared; skips the test with a clear reason when it is absent."""
    if not has_shared():
        pytest.skip(f'shared data not found at {shared_dir()} (set VIDSEG_SHARED)')
    return shared_dir()


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Two cores shared by tests and ROS processes: keep in-process torch to one thread.
    try:
        import torch
        torch.set_num_threads(1)
    except Exception:
        pass
    yield


_next_domain = [int(os.environ.get('VIDSEG_TEST_DOMAIN_BASE', '100'))]


@pytest.fixture
def ros_domain(monkeypatch):
    """An isolated ROS domain id (0-232) and localhost-only discovery for one test."""
    dom = 1 + (os.getpid() * 7 + _next_domain[0]) % 230
    _next_domain[0] += 1
    monkeypatch.setenv('ROS_DOMAIN_ID', str(dom))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.setenv('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    return dom


def pytest_collection_modifyitems(config, items):
    """ROS tests keep their time limit but use pytest-timeout's 'thread' method: a test blocked inside
    DDS (a C-level futex wait, seen once in test_graph_end_to_end in session 3) never returns to
    Python, so the default 'signal' method cannot stop it and the run hangs; the thread method dumps
    every thread's stack and ends the run, so CI fails with a diagnosis instead of hanging."""
    for item in items:
        if item.get_closest_marker('ros') is None:
            continue
        m = item.get_closest_marker('timeout')
        secs = float(m.args[0]) if m is not None and m.args else float(config.getini('timeout') or 300)
        item.add_marker(pytest.mark.timeout(secs, method='thread'), append=False)
