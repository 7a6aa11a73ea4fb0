"""The one console progress display of every stage (shards, training, colorize).

On a terminal it redraws one line in place (at most 10 times a second).  In a
log file or CI it prints a plain line every ~10% of the work or every
`interval_s` seconds (default 60), whichever comes first, so a 100,000-step run
still reports every minute and a short one never floods the output (fewer than
20 units: only the last line).  Each line shows done/total, the rate, elapsed
time and an ETA; note() prints a message line (a validation result) between them.
"""
import os
import sys
import time


def write_console(stream, text: str) -> None:
    """Write `text` to a console stream and flush it.  A console that went away (a closed pipe:
    `luigi ... | head`) is not a failure of the work: console_gone() points it at /dev/null and
    the work goes on (a luigi run's log file still gets everything)."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        console_gone(stream)


def say(*parts) -> None:
    """print(*parts) to stdout through write_console: the default `log` of long-running work
    (training), which must not fail because whoever read its output went away."""
    write_console(sys.stdout, " ".join(map(str, parts)) + "\n")


def console_gone(stream) -> None:
    """The reader of `stream` went away: its file descriptor, and stdout's / stderr's where they
    are the same pipe (`2>&1 |`), now write to /dev/null, so that no later print, log record or
    progress line fails -- nor Python's flush of stdout at exit."""
    try:
        gone = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return                                     # not a file (pytest's capture, StringIO)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for std in (sys.stdout, sys.stderr):
            try:
                fd = std.fileno()
                same = os.fstat(fd)
            except (OSError, ValueError, AttributeError):
                continue
            if (same.st_dev, same.st_ino) == (gone.st_dev, gone.st_ino):
                os.dup2(null, fd)
    finally:
        os.close(null)


def format_seconds(s: float) -> str:
    """12.3 -> '12s', 754 -> '12m34s', 7384 -> '2h03m'."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of `total` units named `desc`; `start` units were done before (a resumed
    run), so the rate and ETA count only this session's work.  total may come later,
    with update()."""

    def __init__(self, total, desc: str, stream=None, start: int = 0, unit: str = "/s",
                 interval_s: float = 60.0):
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last_draw = time.perf_counter()
        self.start = self.done = int(start)
        self._last_decile = int(10 * start / total) if total else -1
        self._open_line = False               # a tty line drawn in place, not yet ended

    def line(self, info: str = "") -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = format_seconds(left) if left != float("inf") else "?"
        pct = 100 * self.done / self.total
        return (f"{self.desc} {self.done}/{self.total} ({pct:.0f}%) {rate:.2f}{self.unit} "
                f"elapsed {format_seconds(elapsed)} ETA {eta}" + (f"  {info}" if info else ""))

    def update(self, n: int = 1, info: str = "", total=None) -> None:
        self.total = max(int(total or self.total or 1), 1)
        self.done += n
        finished = self.done >= self.total
        now = time.perf_counter()
        if self.tty:
            if finished or now - self.last_draw >= 0.1:
                write_console(self.stream, "\r" + self.line(info) + ("\n" if finished else ""))
                self._open_line = not finished
                self.last_draw = now
        else:
            decile = int(10 * self.done / self.total)
            due = self.total >= 20 and (decile != self._last_decile or now - self.last_draw >= self.interval_s)
            if finished or due:
                self._last_decile, self.last_draw = decile, now
                write_console(self.stream, self.line(info) + "\n")

    def note(self, text: str) -> None:
        """Print a message on a line of its own (ending an in-place progress line first)."""
        write_console(self.stream, ("\n" if self._open_line else "") + text + "\n")
        self._open_line = False

    def close(self) -> None:
        """End an unfinished in-place line (a run stopped early)."""
        if self._open_line:
            write_console(self.stream, "\n")
            self._open_line = False


class StageProgress:
    """One line for a whole stage built by many tasks, in many processes: `count_done()`
    counts the stage's finished outputs (on disk, so every worker's work counts) at most
    every `interval_s` seconds and at the task's end; a line reads, e.g.,

        LabShard train: 812/5085 shards, 7.4 img/s/worker, ETA 41m

    img/s/worker is this task's rate; the ETA extrapolates the stage's own progress since
    this task started (all workers together)."""

    def __init__(self, desc: str, count_done, total: int, stream=None, interval_s: float = 60.0):
        self.desc, self.count_done, self.total, self.interval_s = desc, count_done, int(total), interval_s
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.done0, self.images = count_done(), 0

    def shard_done(self, images: int, last: bool = False):
        """A shard of `images` images is written; returns the printed line, or None."""
        self.images += images
        now = time.perf_counter()
        if not last and now - self.last < self.interval_s:
            return None
        self.last = now
        done, elapsed = self.count_done(), max(now - self.t0, 1e-9)
        rate = (done - self.done0) / elapsed                    # the stage's shards per second
        eta = format_seconds((self.total - done) / rate) if rate > 0 else "?"
        line = (f"{self.desc}: {done}/{self.total} shards, {self.images / elapsed:.1f} img/s/worker, "
                f"ETA {eta if done < self.total else '0s'}")
        write_console(self.stream, line + "\n")
        return line
