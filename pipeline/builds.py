"""Live builds of a work dir: while a Luigi run (the `luigi` command, luigi.build) schedules
and runs tasks of a work dir, its process keeps the marker <work_dir>/logs/building-<host>-<pid>
(made when the run first meets a task of that work dir: pipeline/luigi_summary.py; removed
when the run ends, or at exit; one left by a killed process is ignored, its pid being dead).
`colorize-fcn gc` keeps every cache file written since the start (the marker's mtime) of a
live build: it may be one that build made and has not referenced yet (README "Runs and caches").

A process on another host cannot be probed: its build counts as live while its marker is
younger than OTHER_HOST_LIVE_S."""
import atexit
import os
import socket
import time
from pathlib import Path

PREFIX = "building-"
OTHER_HOST_LIVE_S = 24 * 3600.0
_marked = {}          # work dir -> this process's marker in it


def mark_build(work_dir) -> None:
    """Mark this process as building in `work_dir` until end_builds() (or exit)."""
    key = str(work_dir)
    if key in _marked:
        return
    path = Path(work_dir) / "logs" / f"{PREFIX}{socket.gethostname()}-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:           # a read-only work dir: nothing in it can be deleted either
        return
    if not _marked:
        atexit.register(end_builds)
    _marked[key] = path


def end_builds() -> None:
    """The run has ended: remove this process's markers."""
    while _marked:
        _, path = _marked.popitem()
        try:
            path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's process
        return True
    except (OverflowError, ValueError):
        return False


def live_builds(work_dir, now: float = None) -> list:
    """[{"marker", "host", "pid", "started"}] of the builds running in `work_dir`, oldest first."""
    now = time.time() if now is None else now
    found = []
    try:
        entries = [e for e in os.scandir(Path(work_dir) / "logs") if e.name.startswith(PREFIX)]
    except OSError:
        return []
    for entry in entries:
        host, _, pid = entry.name[len(PREFIX):].rpartition("-")
        try:
            pid, started = int(pid), entry.stat().st_mtime
        except (ValueError, OSError):
            continue
        live = _alive(pid) if host == socket.gethostname() else now - started < OTHER_HOST_LIVE_S
        if live:
            found.append({"marker": entry.name, "host": host, "pid": pid, "started": started})
    return sorted(found, key=lambda b: b["started"])
