"""Open regular files only: what a source image, a colorize input or a fingerprinted file must be.

Opening a FIFO for reading blocks until a writer appears (forever, for a FIFO named
`x.jpg` in a dataset); opening a device may have effects; a symbolic link loop fails
every call with ELOOP.  So every file the pipeline reads as data is checked with one
os.stat first (check_regular) and opened by open_regular, which also opens non-blocking
and checks the opened file again: a file swapped for a FIFO between the check and the
open still never blocks the reader.
"""
import errno
import os
import stat

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)        # absent on Windows, which has no FIFOs to block on

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegular(OSError):
    """A path that is not a readable regular file.  reason: "missing", "unreadable" or
    "not_a_file" (pipeline.images.REASONS); detail: one line without the path."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def kind_of(st: os.stat_result) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", ...)."""
    return next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")


def _stat_error(e: OSError) -> NotRegular:
    if e.errno == errno.ENOENT:
        return NotRegular("missing", "no such file")
    if e.errno == errno.ELOOP:
        return NotRegular("unreadable", "a symbolic link loop (too many levels of symbolic links)")
    return NotRegular("unreadable", f"cannot stat it: {e.strerror or e}")


def check_regular(path) -> os.stat_result:
    """os.stat(path) (symbolic links followed) of a regular file; else NotRegular."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _stat_error(e) from None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular("not_a_file", f"{kind_of(st)}, not a regular file")
    return st


def open_regular(path):
    """A regular file opened for reading in binary mode; NotRegular for anything else,
    decided before the open (check_regular) and again on the opened file."""
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP):
            raise _stat_error(e) from None
        raise NotRegular("unreadable", f"cannot open it: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular("not_a_file", f"{kind_of(st)}, not a regular file")
        if _O_NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
