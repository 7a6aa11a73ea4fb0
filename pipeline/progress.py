"""The one console progress display of every stage (shards, training, colorize).

On a terminal it redraws one line in place (at most 10 times a second); in a
log file or CI it prints a plain line every ~10% of the work (only the last
one for fewer than 20 units), so it never floods output.  Each line shows done/total, the rate, elapsed time and an ETA.
"""
import sys
import time


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

    def __init__(self, total, desc: str, stream=None, start: int = 0, unit: str = "/s"):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last_draw = time.perf_counter()
        self.start = self.done = int(start)
        self._last_decile = int(10 * start / total) if total else -1

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
        if self.tty:
            now = time.perf_counter()
            if finished or now - self.last_draw >= 0.1:
                self.stream.write("\r" + self.line(info) + ("\n" if finished else ""))
                self.last_draw = now
        else:
            decile = int(10 * self.done / self.total)
            if finished or (self.total >= 20 and decile != self._last_decile):
                self._last_decile = decile
                self.stream.write(self.line(info) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End an unfinished in-place line (a run stopped early)."""
        if self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()
