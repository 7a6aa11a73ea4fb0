"""A minimal console progress bar: redraws in place on a terminal, prints a
line every ~10% otherwise (log files, CI), so it never floods output."""
import sys
import time


class Progress:
    def __init__(self, total, desc: str, stream=None):
        self.total, self.desc = total, desc        # total may be given later, with update()
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.done, self._last_decile = 0, -1

    def update(self, n: int = 1, info: str = "", total=None) -> None:
        self.total = max(int(total or self.total or 1), 1)
        self.done += n
        frac = min(self.done / self.total, 1.0)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        line = f"{self.desc} [{'#' * int(frac * 20):<20}] {self.done}/{self.total} {rate:.1f}/s {info}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
        elif self.done >= self.total or (self.total >= 100 and int(frac * 10) != self._last_decile):
            self._last_decile = int(frac * 10)     # logs: a line per 10% on long jobs, else at the end
            self.stream.write(line + "\n")
        self.stream.flush()
