"""A signal is a request to save and leave (README "Stopping and resuming a run").

train.fit trains inside `stop_signals()`: the first SIGINT (Ctrl-C) or SIGTERM (a cluster's
preemption, `kill`) only sets `StopRequest.requested`; fit finishes the current step,
writes a resume checkpoint at that iteration and raises TrainingStopped, whose message is
the one line it prints.  A second signal ends the process at once, by that signal's
default action (exit 130 / 143): the last checkpoint written stays the resume point.
Outside the main thread Python cannot install handlers: signals keep their usual effect.

TrainingStopped is a KeyboardInterrupt: a Python session sees what it sees on Ctrl-C;
`luigi --module tasks` (pipeline.luigi_summary) and `python -m train.distributed` end
with its exit_code, EXIT_STOPPED, without a traceback.

DataLoader worker processes run `quiet_worker()` first: they ignore SIGINT/SIGTERM (Ctrl-C
reaches the whole process group; the main process ends them when it is done with them)
and are killed by the kernel when the process that started them dies (Linux
PR_SET_PDEATHSIG), instead of lingering until torch's 5 s watchdog notices.

No torch here.  EXIT_STOPPED and SIGTERM-as-Ctrl-C for the other commands: pipeline/signals.py.
"""
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading

from pipeline.signals import EXIT_STOPPED, SIGNALS, handling, requested

_PR_SET_PDEATHSIG = 1        # linux/prctl.h


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal with its state saved; str(e) is the line fit printed."""
    exit_code = EXIT_STOPPED

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


def stopped_message(iteration: int, saved: bool) -> str:
    if not saved:                         # stopped before the first step of a fresh run
        return f"stopped at iteration {iteration}; nothing trained yet; the same command starts the run"
    return f"stopped at iteration {iteration}; checkpoint written; the same command resumes"


class StopRequest:
    """What the signal handlers of stop_signals() saw: `signal`, the first one's name, or None."""

    def __init__(self):
        self.signal = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def handle(self, signum, frame):
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        sys.stderr.write(f"{signal.Signals(signum).name} again: stopping at once; the last checkpoint "
                         f"written is the resume point\n")
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)      # the default action: the process ends now


@contextlib.contextmanager
def stop_signals():
    """Within the block, SIGINT and SIGTERM are stop requests (module docstring); yields the
    StopRequest.  The previous handlers come back on leaving."""
    request = StopRequest()
    request.signal = requested()          # one received before training began (pipeline.signals)
    with handling(dict.fromkeys(SIGNALS, request.handle)):
        yield request


def quiet_worker() -> None:
    """In a DataLoader worker: ignore stop signals and die with the parent (module docstring).
    A SIGTERM from the parent itself still ends the worker: the loader's shutdown and
    multiprocessing's exit handler terminate() their workers and then wait for them, so a
    worker that ignored it would hang its parent forever.  SIGTERM is blocked and a thread
    reads each one with its sender (sigwaitinfo): from the parent, exit; from anyone else
    (a cluster's SIGTERM to every process of the job), ignore, as Ctrl-C is."""
    for s in SIGNALS:
        if s != signal.SIGTERM:
            signal.signal(s, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)        # blocked below: an ignored one is discarded
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_parents_sigterm, name="parent-sigterm", daemon=True).start()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _end_on_parents_sigterm() -> None:
    """quiet_worker's thread: exit on a SIGTERM sent by the parent process, ignore others."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == os.getppid():
            os._exit(0)
