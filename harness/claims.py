"""Per-cell claims, so that several runs on one directory share the work.

Before computing a cell, a run *claims* it by creating ``RESULTS/.claims/<cell id>.claim``
under an exclusive lock of the claims directory (``fcntl.flock`` of ``.claims/.lock``).  The
file holds the claimant's host, pid, process start time and a random token; while the cell
computes, a heartbeat thread refreshes its modification time.  Another run that finds a
claim skips the cell for now and comes back to it at the end: by then the cell is finished
(its result file exists), or the claim is *stale* and is taken over:

- on the same host, when the claimant's pid is no longer alive, or is alive but is another
  process (its start time differs: the pid was reused).  A live claimant on the same host
  is never stale, however old its heartbeat (a long kernel call holds the GIL and delays
  the heartbeat thread);
- from another host (whose pids mean nothing here), when the claim's heartbeat is older
  than ``STALE_AFTER`` seconds (a lost machine: the heartbeat runs every ``HEARTBEAT``
  seconds, and the runner keeps kernel calls much shorter than ``STALE_AFTER`` by computing
  seeds in blocks, so a live claim is not that old).

So no cell is computed twice by runs that are alive, and no cell is lost to a run that died.
A run releases only its own claim (the token), never one another run took over.  Hidden
names (``.claims``) are skipped by every results reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLAIMS = ".claims"
HEARTBEAT = 30.0          # seconds between refreshes of a live claim
STALE_AFTER = 10 * 60.0   # a claim from another host not refreshed for this long is stale


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # e.g. PermissionError: the process exists
        return True
    return True


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc/<pid>/stat`` field
    22), which tells a reused pid from the original process; None where unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    return text.rpartition(")")[2].split()[19]


def _host() -> str:
    return socket.gethostname()


@dataclass
class Claim:
    """A held claim; ``release()`` (or leaving the ``with`` block) removes it.
    ``previous``: the owner of the stale claim this one took over, if any."""

    path: Path
    token: str
    previous: dict | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
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
        try:
            with _locked(self.path.parent):
                info = owner(self.path)
                if info is not None and info.get("token") == self.token:
                    self.path.unlink(missing_ok=True)
        except OSError:
            pass                 # the directory went away: nothing left to release


def owner(path: Path) -> dict | None:
    """The claim's {host, pid, start, started, token} (None if it vanished or is unreadable)."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_stale(path: Path, now: float | None = None) -> bool:
    """True if the claim at ``path`` belongs to a dead or lost run (module docstring)."""
    info = owner(path)
    try:
        age = (time.time() if now is None else now) - Path(path).stat().st_mtime
    except FileNotFoundError:
        return True
    if info is None:             # being written, or garbage: judge by age alone
        return age > STALE_AFTER
    if info.get("host") == _host():
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            return True
        if not pid_alive(pid):
            return True
        start = info.get("start")
        return start is not None and process_start(pid) not in (None, start)
    return age > STALE_AFTER


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the claims directory (``fcntl.flock``), so that checking a claim
    and taking it over is one step for concurrent runs."""
    fd = os.open(Path(directory) / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)             # closing releases the lock


def try_claim(results_dir, cell_id: str, heartbeat: float = HEARTBEAT) -> Claim | None:
    """Claim a cell, or None if a live run holds it.  A stale claim is taken over."""
    directory = Path(results_dir) / CLAIMS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cell_id}.claim"
    token = secrets.token_hex(8)
    previous = None
    with _locked(directory):
        if path.exists():
            if not is_stale(path):
                return None
            previous = owner(path) or {}
            path.unlink(missing_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": _host(), "pid": os.getpid(),
                       "start": process_start(os.getpid()), "started": time.time(),
                       "token": token}, fh)
    claim = Claim(path, token, previous)
    if heartbeat > 0:
        def beat():
            while not claim._stop.wait(heartbeat):
                try:
                    os.utime(path)
                except OSError:
                    return
        claim._thread = threading.Thread(target=beat, daemon=True, name=f"claim-{cell_id}")
        claim._thread.start()
    return claim


def live_claims(results_dir) -> dict[str, dict]:
    """Cell id -> owner of every claim held by a live run (for ``harness status``)."""
    directory = Path(results_dir) / CLAIMS
    if not directory.is_dir():
        return {}
    return {p.stem: owner(p) or {} for p in sorted(directory.glob("*.claim"))
            if not is_stale(p)}
