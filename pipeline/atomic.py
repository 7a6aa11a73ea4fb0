"""Atomic writes: write to a hidden temporary path beside the target, then rename.

A crash (even kill -9) leaves at most a temporary file whose name cannot be
mistaken for a finished output; `remove_stale_temporaries` cleans those up on
the next run.  The temporary name carries host and pid so a cleanup never
removes a file that a live process on this host is still writing.
"""
import contextlib
import errno
import os
import shutil
import socket
import uuid
from pathlib import Path

TMP_TAG = ".tmp-"


class TargetExists(FileExistsError):
    """atomic_path(replace=False): the target exists (maybe made by another process meanwhile)."""


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_TAG}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path, replace: bool = True):
    """Yield a temporary path to write `path` through; rename it into place on success.

    Works for files and folders.  On any exception the temporary is removed and
    `path` is untouched.  An OSError (full disk, read-only or missing folder, ...)
    is re-raised as a one-line OSError "cannot write <path>: <reason>" with the same
    errno, so the message names the output, not the temporary.

    replace=False (files only): never replace a `path` that exists, even one another
    process makes while this one writes; that raises TargetExists (see _publish_new).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if not replace:
            _publish_new(tmp, path)
        else:
            if tmp.is_dir() and path.is_dir():
                shutil.rmtree(path)   # a folder cannot be replaced over a non-empty one
            os.replace(tmp, path)
    except TargetExists:
        raise
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
        raise OSError(e.errno, f"cannot write {path}: {reason}") from None
    finally:
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        except OSError:
            pass              # never hide the error above; a stale temporary is removed later


# link() errors that mean "this filesystem has no hard links" (FAT/exFAT, some FUSE and SMB mounts)
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def _publish_new(tmp: Path, path: Path) -> None:
    """Move the finished file `tmp` to `path` unless `path` exists (TargetExists).

    os.replace would silently replace a file another process wrote meanwhile; a hard
    link fails atomically instead.  Without hard links, `path` is first reserved with an
    exclusive create (an empty file for an instant; a crash leaves it empty) and then
    replaced by the finished file."""
    if tmp.is_dir():
        raise ValueError("replace=False publishes files only")
    try:
        try:
            os.link(tmp, path)
        except OSError as e:
            if isinstance(e, FileExistsError) or e.errno not in _NO_HARD_LINKS:
                raise
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            os.replace(tmp, path)
    except FileExistsError:
        raise TargetExists(errno.EEXIST, f"cannot write {path}: it exists; not replaced") from None
    else:
        with contextlib.suppress(OSError):   # published; a leftover temporary is removed later
            tmp.unlink()


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def owner_alive(name: str) -> bool:
    """True unless the temporary was made by a dead process on this host."""
    try:
        host_pid = name.split(TMP_TAG, 1)[1].rsplit("-", 1)[0]
        host, pid = host_pid.rsplit("-", 1)
        if host != socket.gethostname():
            return True       # another machine's writer: we cannot tell, keep it
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (IndexError, ValueError, PermissionError):
        return True


def remove_stale_temporaries(folder) -> int:
    """Delete temporaries left in `folder` by crashed writers; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TMP_TAG in entry.name and not owner_alive(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed += 1
    return removed
