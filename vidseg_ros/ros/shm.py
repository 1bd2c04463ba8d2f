"""Stale Fast DDS shared-memory files: find them and remove them.

Fast DDS's shared-memory transport (the default between processes on one host) keeps in ``/dev/shm``:

- per participant, a data segment ``fastdds_<16 hex>`` (0.5 MB, or 35 MB with
  ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``) and its lock file ``fastdds_<16 hex>_el``;
- per listening port, ``fastdds_port<N>`` with the lock files ``fastdds_port<N>_el`` (exclusive
  listener) / ``_sl`` (shared listeners) and the semaphore ``sem.fastdds_port<N>_mutex``.

A live owner holds an ``flock`` on each lock file. A process that dies without closing its participant
(SIGKILL, a crash, the OOM killer) leaves all of them behind, and the memory stays allocated until the
next reboot. On the dev machine ~1,700 such files piled up in a day of fault-injection tests, and then
new participants failed to open their ports (``open_and_lock_file failed``) and nodes hung at creation
(RELIABILITY.md).

The test for "stale" is the one of Fast DDS's own ``fastdds shm clean`` (its ``tools/fastdds/shm/
clean.py``): a lock file that nobody holds means that its owner is gone. Two precautions on top:

- files younger than ``min_age_s`` are left alone, so a participant that has just created its lock
  file and not yet locked it is never touched;
- a port goes only when *every* lock file it has is free (the Fast DDS tool checks ``_el`` and
  ``_sl`` separately, which could take the segment of a live shared listener).

The lock is held while the files are removed. Port segments without any lock file (no listener left)
are small (52 kB) and are left alone, as the Fast DDS tool does.

Ports are only cleaned on request (``ports=True``, ``vidseg shm-clean --ports``), while no ROS 2 process
runs: port numbers are reused (per domain and participant index), and a live writer may still have a
dead listener's port mapped; Fast DDS resets such a zombie port in place when a new listener opens it,
whereas a removed file would leave that writer sending into an orphan mapping. A participant's data
segment has a fresh random name each time, so removing a dead one cannot affect a live process: the
automatic passes (runner, launch file) remove segments only, and those are what hold the memory
(0.5 MB, or 35 MB with the large-data profile, each).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import time

SHM_DIR = '/dev/shm'
MIN_AGE_S = 30.0

_SEGMENT_LOCK = re.compile(r'^fastdds_[0-9a-z]{16}_el$')
_PORT_LOCK = re.compile(r'^fastdds_port(\d{1,5})_(el|sl)$')


@dataclasses.dataclass
class CleanReport:
    removed: list = dataclasses.field(default_factory=list)   # paths removed (or that would be)
    freed_bytes: int = 0          # memory the removed files held (allocated blocks, not apparent size)
    in_use: int = 0               # segments / ports whose lock a live process holds
    too_young: int = 0            # stale-looking but younger than min_age_s: left for a later pass
    errors: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        mb = self.freed_bytes / 2 ** 20
        s = (f'{len(self.removed)} stale Fast DDS shared-memory file(s), {mb:.1f} MiB; '
             f'{self.in_use} in use, {self.too_young} too young to judge')
        return s + (f'; {len(self.errors)} error(s): {self.errors[0]}' if self.errors else '')


def _blocks(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _age(path: str, now: float) -> float:
    return now - os.stat(path).st_mtime   # creation, or the last write


def _try_lock(path: str):
    """An fd holding an exclusive flock on ``path``, or None when a live process holds a lock on it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_stale_fastdds_shm(shm_dir: str = SHM_DIR, min_age_s: float = MIN_AGE_S,
                            dry_run: bool = False, only=None, ports: bool = False) -> CleanReport:
    """Remove the shared-memory files of Fast DDS participants that are gone (see the module doc).

    Never raises for a file it cannot read or remove (another cleaner, permissions): that goes to
    ``report.errors``. ``dry_run`` reports what would go without removing anything. ``only``: a set of
    segment / port names (``fastdds_<id>``, ``fastdds_port<N>``) to restrict the pass to. ``ports``:
    also the port files (only while no ROS 2 process runs, see the module doc).
    """
    rep = CleanReport()
    try:
        names = os.listdir(shm_dir)
    except OSError as e:
        rep.errors.append(f'{shm_dir}: {e.strerror or e}')
        return rep
    now = time.time()
    groups = {}   # base -> (lock files, extra files)
    for n in names:
        if _SEGMENT_LOCK.match(n):
            groups.setdefault(n[:-3], ([], []))[0].append(n)
        elif ports:
            m = _PORT_LOCK.match(n)
            if m:
                base = n[:-3]
                groups.setdefault(base, ([], [f'sem.{base}_mutex']))[0].append(n)
    for base, (locks, extra) in sorted(groups.items()):
        if only is not None and base not in only:
            continue
        paths = [os.path.join(shm_dir, n) for n in locks]
        try:
            young = any(_age(p, now) < min_age_s for p in paths + [os.path.join(shm_dir, base)]
                        if os.path.exists(p))
        except OSError:
            continue   # vanished meanwhile (its owner or another cleaner removed it)
        fds = []
        try:
            for p in paths:
                fd = _try_lock(p)
                if fd is None:
                    break
                fds.append(fd)
            if len(fds) < len(paths):
                rep.in_use += 1
                continue
            if young:
                rep.too_young += 1
                continue
            for n in [base] + locks + extra:
                p = os.path.join(shm_dir, n)
                if not os.path.exists(p):
                    continue
                size = _blocks(p)
                if not dry_run:
                    try:
                        os.unlink(p)
                    except OSError as e:
                        rep.errors.append(f'{p}: {e.strerror or e}')
                        continue
                rep.removed.append(p)
                rep.freed_bytes += size
        finally:
            for fd in fds:
                os.close(fd)
    return rep


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog='vidseg shm-clean', description='Remove the /dev/shm files that Fast '
                                 'DDS participants left behind when they were killed (a live '
                                 "participant's files are never touched).")
    ap.add_argument('--dir', default=SHM_DIR, help='shared-memory directory (default %(default)s)')
    ap.add_argument('--min-age', type=float, default=MIN_AGE_S,
                    help='leave files younger than this many seconds (default %(default)s)')
    ap.add_argument('--dry-run', action='store_true', help='only list what would be removed')
    ap.add_argument('--ports', action='store_true',
                    help='also the port files of dead listeners: only while no ROS 2 process runs (a live '
                         'writer may still map a dead listener\'s port)')
    ap.add_argument('-v', '--verbose', action='store_true', help='print every file removed')
    args = ap.parse_args(argv)
    rep = clean_stale_fastdds_shm(args.dir, args.min_age, args.dry_run, ports=args.ports)
    if args.verbose:
        for p in rep.removed:
            print(p)
    print(('would remove ' if args.dry_run else 'removed ') + rep.summary())
    return 1 if rep.errors else 0
