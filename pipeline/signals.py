"""Stop signals as every command of this project treats them: a request to save and leave.

EXIT_STOPPED is the exit status of a command stopped by SIGINT (Ctrl-C) or SIGTERM after
keeping what it had finished (README's exit-code table); the same command goes on from there.

`luigi --module tasks ...` runs inside stop_requests(): the first signal only records a request,
and the work stops at the next stop_point() -- the start of a task, the next shard of a batch
-- by raising Stopped there, where nothing is half done.  (Raising KeyboardInterrupt wherever
the signal lands, as Python does for Ctrl-C, broke h5py's file callbacks, weakref callbacks
and multiprocessing's queues: lost signals, failed tasks, hangs at exit.)  A second signal
ends the process at once, by its default action (exit 130 / 143).  Training has its own
handlers while it runs (train/stop.py: it finishes the step and writes a checkpoint); a
request recorded before it started stops it before its first step.

sigterm_interrupts() is for colorize, whose loop is written for a KeyboardInterrupt anywhere:
SIGTERM then raises it, as Ctrl-C does.  No torch, no luigi here.
"""
import contextlib
import os
import signal
import threading

EXIT_STOPPED = 75            # README's exit-code table (sysexits' EX_TEMPFAIL: "try again")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPED_LINE = "colorize-fcn: stopped: what finished is kept; the same command goes on from there"

_request = {"signal": None}  # the first stop signal's name, within stop_requests()


class Stopped(KeyboardInterrupt):
    """Raised at a stop_point() after a stop signal: what finished is kept."""
    exit_code = EXIT_STOPPED


def requested():
    """The name of the stop signal received within stop_requests() ('SIGINT', 'SIGTERM'), or None."""
    return _request["signal"]


def stop_point() -> None:
    """Between two units of work: raise Stopped if a stop signal was received."""
    if _request["signal"] is not None:
        raise Stopped(STOPPED_LINE)


def _record(signum, frame):
    if _request["signal"] is None:
        _request["signal"] = signal.Signals(signum).name
        return
    signal.signal(signum, signal.SIG_DFL)          # the second one: the default action, now
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def handling(handlers: dict):
    """Within the block handlers[sig] handles each sig; the previous handlers come back on
    leaving.  Outside the main thread Python cannot install handlers: nothing changes there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_requests():
    """Within the block the first SIGINT/SIGTERM is recorded for stop_point() (module docstring);
    the request is forgotten on leaving."""
    try:
        with handling(dict.fromkeys(SIGNALS, _record)):
            yield
    finally:
        _request["signal"] = None


def sigterm_interrupts():
    """Within the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does."""
    return handling({signal.SIGTERM: signal.default_int_handler})
