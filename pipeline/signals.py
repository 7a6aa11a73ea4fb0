"""Stop signals as every command of this project treats them: a request to save and leave.

EXIT_STOPPED is the exit status of a command stopped by SIGINT (Ctrl-C) or SIGTERM after
keeping what it had finished (README's exit-code table); the same command goes on from there.
sigterm_interrupts() makes SIGTERM (a cluster's preemption, `kill`) raise KeyboardInterrupt
as Ctrl-C does, so one code path handles both.  Training's own handling, which finishes the
current step and writes a checkpoint first, is train/stop.py's.  No torch, no luigi here.
"""
import contextlib
import signal
import threading

EXIT_STOPPED = 75            # README's exit-code table (sysexits' EX_TEMPFAIL: "try again")


@contextlib.contextmanager
def sigterm_interrupts():
    """Within the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does; the previous handler
    comes back on leaving.  Outside the main thread Python cannot install handlers: nothing
    changes there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
