"""ros/shm.py: stale Fast DDS shared-memory files go, a live participant's stay."""
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidseg_ros.ros import runner, shm


def _touch(d: Path, name: str, size: int = 0, age: float = 100.0) -> Path:
    p = d / name
    p.write_bytes(b'\1' * size)
    t = time.time() - age
    os.utime(p, (t, t))
    return p


@pytest.fixture
def shm_dir(tmp_path):
    d = tmp_path / 'shm'
    d.mkdir()
    for base in ('fastdds_0123456789abcdef', 'fastdds_fedcba9876543210', 'fastdds_port7413',
                 'fastdds_port7415', 'fastdds_port7417'):
        _touch(d, base, size=4096)
    for n in ('fastdds_0123456789abcdef_el', 'fastdds_fedcba9876543210_el', 'fastdds_port7413_el',
              'sem.fastdds_port7413_mutex', 'fastdds_port7415_el', 'fastdds_port7415_sl', 'other_file'):
        _touch(d, n)
    # fastdds_port7417: no lock file at all (no listener left): not judged, as Fast DDS's tool does
    return d


def _hold(path: Path, mode=fcntl.LOCK_EX):
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    return fd


def test_clean_removes_only_unlocked_files(shm_dir):
    live = _hold(shm_dir / 'fastdds_fedcba9876543210_el')            # a live participant
    shared = _hold(shm_dir / 'fastdds_port7415_sl', fcntl.LOCK_SH)   # a live shared listener on a port
    try:
        before = sorted(os.listdir(shm_dir))
        dry = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=10, dry_run=True, ports=True)
        assert sorted(os.listdir(shm_dir)) == before
        # by default (the runner's and launch file's passes) only participant segments, never ports
        seg = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=10, dry_run=True)
        assert sorted(Path(p).name for p in seg.removed) == ['fastdds_0123456789abcdef',
                                                             'fastdds_0123456789abcdef_el']
        rep = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=10, ports=True)
        assert sorted(dry.removed) == sorted(rep.removed)
        assert sorted(Path(p).name for p in rep.removed) == [
            'fastdds_0123456789abcdef', 'fastdds_0123456789abcdef_el',
            'fastdds_port7413', 'fastdds_port7413_el', 'sem.fastdds_port7413_mutex']
        assert rep.in_use == 2 and rep.too_young == 0 and not rep.errors
        assert rep.freed_bytes >= 4096   # the removed segment's allocated blocks
        left = set(os.listdir(shm_dir))
        assert {'fastdds_fedcba9876543210', 'fastdds_fedcba9876543210_el', 'fastdds_port7415',
                'fastdds_port7415_el', 'fastdds_port7415_sl', 'fastdds_port7417', 'other_file'} == left
    finally:
        os.close(live)
        os.close(shared)
    # once their owners are gone, they go too (the port without any lock file stays)
    rep = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=10, ports=True)
    assert len(rep.removed) == 5 and rep.in_use == 0
    assert set(os.listdir(shm_dir)) == {'fastdds_port7417', 'other_file'}


def test_clean_leaves_young_files_for_a_later_pass(shm_dir):
    _touch(shm_dir, 'fastdds_aaaaaaaaaaaaaaaa', size=10, age=1)
    _touch(shm_dir, 'fastdds_aaaaaaaaaaaaaaaa_el', age=1)   # created, maybe not yet locked by its owner
    rep = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=10, only={'fastdds_aaaaaaaaaaaaaaaa'})
    assert rep.removed == [] and rep.too_young == 1
    assert (shm_dir / 'fastdds_aaaaaaaaaaaaaaaa').exists()
    rep = shm.clean_stale_fastdds_shm(str(shm_dir), min_age_s=0, only={'fastdds_aaaaaaaaaaaaaaaa'})
    assert len(rep.removed) == 2 and not (shm_dir / 'fastdds_aaaaaaaaaaaaaaaa').exists()
    assert (shm_dir / 'fastdds_0123456789abcdef').exists()   # not in ``only``


def test_clean_errors_are_reported_not_raised(tmp_path, capsys):
    rep = shm.clean_stale_fastdds_shm(str(tmp_path / 'missing'))
    assert rep.errors and 'missing' in rep.errors[0] and rep.removed == []
    assert shm.main(['--dir', str(tmp_path / 'missing')]) == 1
    assert 'error' in capsys.readouterr().out


def test_cli_dry_run_lists_files(shm_dir, capsys):
    from vidseg_ros import cli
    assert cli.main(['shm-clean', '--dir', str(shm_dir), '--dry-run', '-v', '--ports']) == 0
    out = capsys.readouterr().out
    assert 'fastdds_0123456789abcdef_el' in out and 'would remove 10 stale' in out   # no lock held here
    assert cli.main(['shm-clean', '--dir', str(shm_dir), '--dry-run']) == 0
    assert 'would remove 4 stale' in capsys.readouterr().out       # the two segments and their locks only
    assert (shm_dir / 'fastdds_0123456789abcdef').exists()


def test_runner_cleans_at_start_and_after_a_respawn(monkeypatch):
    calls = []
    monkeypatch.setattr(shm, 'clean_stale_fastdds_shm', lambda *a, **k: calls.append(1) or shm.CleanReport())
    g = runner.Graph([], shm_clean=True)
    g.start()
    assert calls == [1] and g.shm_due is None
    g.shm_due = time.monotonic() - 1          # as set by a respawn, now due
    g.poll()
    assert calls == [1, 1] and g.shm_due is None
    g2 = runner.Graph([], shm_clean=False)
    g2.start()
    assert calls == [1, 1]
    assert runner.build_parser().parse_args(['--no-shm-clean']).no_shm_clean


_PARTICIPANT = """
import rclpy
rclpy.init()
n = rclpy.create_node('shm_probe')
print('ready', flush=True)
import time
time.sleep(120)
"""


def _own_segments(pid: int) -> set:
    """Fast DDS segments a process has mapped (its participant's data segment among them)."""
    segs = set()
    for line in Path(f'/proc/{pid}/maps').read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ''
        name = os.path.basename(path)
        if path.startswith('/dev/shm/fastdds_') and not name.startswith('fastdds_port'):
            segs.add(name)
    return segs


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_killed_participant_segment_is_removed_live_one_kept(ros_domain):
    """A real rclpy participant: its segment is in use while it lives and stale once SIGKILLed."""
    pytest.importorskip('rclpy')
    if not os.path.isdir(shm.SHM_DIR):
        pytest.skip('no /dev/shm')
    p = subprocess.Popen([sys.executable, '-c', _PARTICIPANT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS='DEFAULT'))
    try:
        assert p.stdout.readline().strip() == b'ready'
        deadline = time.monotonic() + 10
        while not (segs := _own_segments(p.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert segs, 'the participant mapped no Fast DDS segment (shared-memory transport off?)'
        rep = shm.clean_stale_fastdds_shm(min_age_s=0, only=segs)
        assert rep.removed == [] and rep.in_use == len(segs)
        p.kill()
        p.wait(10)
        rep = shm.clean_stale_fastdds_shm(min_age_s=0, only=segs)
        assert rep.in_use == 0 and rep.removed
        assert not any(os.path.exists(os.path.join(shm.SHM_DIR, s)) for s in segs)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
