"""Per-cell claims, so that several runs on one directory share the work.

Before computing a cell, a run *claims* it by creating ``RESULTS/.claims/<cell id>.claim``
under an exclusive lock of the claims directory (``fcntl.flock``).  The file
holds the claimant's host, pid and start time; while the cell computes, a heartbeat thread
refreshes its modification time.  Another run that finds a claim skips the cell for now and
comes back to it at the end: by then the cell is finished (its result file exists), or the
claim is *stale* and is taken over:

- on the same host, when the claimant's pid is no longer alive (a killed run);
- on any host, when the claim's heartbeat is older than ``STALE_AFTER`` seconds (a lost
  machine: the heartbeat runs every ``HEARTBEAT`` seconds, so a live claim is never that old).

So no cell is computed twice by runs that are alive, and no cell is lost to a run that died.
Hidden names (``.claims``) are skipped by every results reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLAIMS = ".claims"
HEARTBEAT = 30.0          # seconds between refreshes of a live claim
STALE_AFTER = 10 * 60.0   # a claim not refreshed for this long belongs to a lost run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # e.g. PermissionError: the process exists
        return True
    return True


@dataclass
class Claim:
    """A held claim; ``release()`` (or leaving the ``with`` block) removes it."""

    path: Path
    _stop: threading.Event
    _thread: threading.Thread | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)


def owner(path: Path) -> dict | None:
    """The claim's {host, pid, started} (None if it vanished or is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, now: float | None = None) -> bool:
    """True if the claim at ``path`` belongs to a dead or lost run."""
    info = owner(path)
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if info is None:
        return age > STALE_AFTER
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return True
    return age > STALE_AFTER


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the claims directory (``fcntl.flock``), so that checking a claim
    and taking it over is one step for concurrent runs."""
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def try_claim(results_dir, cell_id: str, heartbeat: float = HEARTBEAT) -> Claim | None:
    """Claim a cell, or None if a live run holds it.  A stale claim is taken over."""
    directory = Path(results_dir) / CLAIMS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cell_id}.claim"
    with _locked(directory):
        if path.exists():
            if not is_stale(path):
                return None
            path.unlink(missing_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time()}, fh)
    stop = threading.Event()
    claim = Claim(path, stop)
    if heartbeat > 0:
        def beat():
            while not stop.wait(heartbeat):
                try:
                    os.utime(path)
                except FileNotFoundError:
                    return
        claim._thread = threading.Thread(target=beat, daemon=True, name=f"claim-{cell_id}")
        claim._thread.start()
    return claim


def live_claims(results_dir) -> list[Path]:
    """Claims of runs that are alive (for ``harness status``)."""
    directory = Path(results_dir) / CLAIMS
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.glob("*.claim")) if not is_stale(p)]
