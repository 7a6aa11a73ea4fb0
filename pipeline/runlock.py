"""One writer per folder: an exclusive flock on <folder>/.lock, held while a process writes it.

train.fit.fit takes it on a run folder, so two processes training the same run (two luigi
commands that both need it, or luigi and torchrun) never both write it: the second WAITS
(a one-line "waiting for <folder> held by host:pid ..." message now and then) or, with
wait=False, fails at once with a one-line RunLocked naming the holder.

The kernel drops an flock when its holder dies (any exit, kill -9 included), so a lock is
never stale after a crash; the file itself stays (deleting it while a process waits on it
would let two processes lock two different files) and holds, while locked, one JSON line
naming the holder: {"host", "pid", "started"}.

Shared filesystems: NFS clients emulate flock with whole-file POSIX locks that the server
arbitrates, so the lock spans hosts, unless the mount says `nolock` or `local_lock=flock`/`all`
(then it is local to each host, and nothing can tell).  A client that crashes keeps its lock
until the server notices (NFSv4: the lease, ~90 s).  Lustre needs the `flock` mount option
(`localflock` is per host); without it flock fails, and so does this lock, with one line
naming the file (LockUnsupported).  CephFS and local filesystems support it.
"""
import errno
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from .progress import say

try:
    import fcntl
except ImportError:           # Windows: no flock; reported when a lock is taken
    fcntl = None

LOCK_NAME = ".lock"
POLL_S = 1.0                  # how often a waiting process tries again
REPORT_S = 60.0               # how often it says it is still waiting
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


def _reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else " ".join(str(e).split())


class RunLocked(RuntimeError):
    """The folder is locked by another process (wait=False)."""


class LockUnsupported(OSError):
    """flock does not work on this folder's filesystem."""


def _holder_text(raw: bytes):
    """'host:pid (since <time>)' from the lock file's JSON line; None when there is none."""
    try:
        h = json.loads(raw.decode())
        return f"{h['host']}:{h['pid']} (since {h['started']})"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def holder(folder):
    """'host:pid (since <time>)' of the process holding <folder>/.lock, or None when nobody
    does (no file, an emptied one, or a dead holder's: the kernel dropped its flock).  Probes
    with a shared non-blocking flock, taken and dropped at once; never waits."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as e:
        return (_holder_text(os.pread(fd, 4096, 0)) or "an unknown process") if e.errno in _BUSY else None
    finally:
        os.close(fd)


class RunLock:
    """Exclusive lock on `folder` (created if needed).  hold=False: take part in acquire()'s
    agreement without touching the filesystem (ranks > 0 of a distributed run)."""

    def __init__(self, folder, log=say, hold=True, poll_s=None, report_s=None):
        self.folder, self.log, self.hold = Path(folder), log, hold
        self.path = self.folder / LOCK_NAME
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.report_s = REPORT_S if report_s is None else report_s
        self._fd = None

    # -- one attempt; outcomes are plain tuples so that ranks can share them
    def _attempt(self):
        """('ok', '') when this process now holds the lock, ('held', holder) when another one
        does, ('unsupported' | 'unwritable', (errno, one-line message)) when it cannot lock."""
        if fcntl is None:
            return "unsupported", (errno.ENOLCK, f"cannot lock {self.path}: this platform has no flock")
        try:
            if self._fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            return "unwritable", (e.errno, f"cannot create the lock file {self.path}: {_reason(e)}")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _BUSY:
                return "held", self._holder()
            self._close()
            return "unsupported", (e.errno, f"cannot lock {self.path}: {_reason(e)} (this filesystem does "
                                            f"not support flock? see README 'One writer per run folder')")
        self._record_holder()
        return "ok", ""

    def _holder(self) -> str:
        for _ in range(20):      # the holder writes its name just after it takes the lock
            holder = _holder_text(os.pread(self._fd, 4096, 0))
            if holder:
                return holder
            time.sleep(0.01)
        return "an unknown process"

    def _record_holder(self):
        line = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": datetime.now().astimezone().isoformat(timespec="seconds")})
        data = (line + "\n").encode()
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError:
            pass                 # e.g. a full disk: the lock holds all the same, its holder shows as unknown

    def acquire(self, wait=True, agree=None) -> None:
        """Take the lock; while another process holds it, wait (logging who holds it every
        report_s seconds) or, wait=False, raise RunLocked.  agree(outcome) -> outcome: makes
        every process of a group act on one holder's outcome (a broadcast from the process
        with hold=True); None for a single process."""
        agree = agree or (lambda outcome: outcome)
        reported = None
        while True:
            kind, detail = agree(self._attempt() if self.hold else None)
            if kind == "ok":
                return
            if kind == "unsupported":
                raise LockUnsupported(*detail)
            if kind == "unwritable":
                raise OSError(*detail)
            if not wait:
                self._close()
                raise RunLocked(f"{self.folder} is locked by {detail}: another process is training "
                                f"this run (wait for it, or stop it)")
            now = time.monotonic()
            if reported is None or now - reported >= self.report_s:
                self.log(f"waiting for {self.folder} held by {detail}")
                reported = now
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Unlock (for forked children sharing the file too, e.g. DataLoader workers) and close."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)              # no holder any more
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass                                   # closing below releases it all the same
        finally:
            self._close()

    def _close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
