"""Console and log file of `luigi --module tasks ...` runs.

luigi.cfg names luigi-logging.ini as [core] logging_conf_file, Luigi's supported hook
for its logging (the [logging] section works only with TOML configs); Luigi loads it
once per process, after parsing the command line and before scheduling, so the log
file lands in the work dir the command line gave.  That file wires the two handlers here
to Luigi's loggers and to pipeline.luigi_summary's "colorize-fcn" logger.

The console shows what a person acts on: the project's own messages, one line per failed
task (`colorize-fcn: error: <Task>: <message>`), other Luigi warnings as one line each,
Luigi's end-of-run summary and, after it, one line saying what failed and where the log
is.  Luigi's per-task chatter (~8 INFO lines a task: ~80,000 at ImageNet scale) and every
traceback go to the log file only: <work_dir>/logs/luigi-<YYYYmmdd-HHMMSS>-<host>-<pid>.log,
or <tmp>/colorize-fcn-logs/ when the work dir is not writable.  COLORIZE_DEBUG=1 puts
Luigi's full output, tracebacks included, back on the console.
"""
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import Register

from .luigi_cmdline import work_dir_on_command_line
from .luigi_summary import ERROR_LOGGER, run_problems
from .progress import console_gone, write_console

DEBUG_ENV = "COLORIZE_DEBUG"
_LUIGI_CODE = os.path.dirname(luigi.__file__) + os.sep
_RUN_SUMMARY = "===== Luigi Execution Summary ====="

log_file = None    # the Path this process logs to (None: no file)


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


# ------------------------------------------------------------------------------ log file
def _work_dir() -> Path:
    """[colorize] work_dir as the command line set it.  pipeline.stage.colorize is found by name, as
    this module is loaded before it; where it is not loaded (luigid), luigi.cfg's value.  When
    the command line failed to parse (Luigi sets logging up afterwards, with no parsed command
    line left), its --colorize-work-dir."""
    if CmdlineParser.get_instance() is None and work_dir_on_command_line():
        return Path(work_dir_on_command_line())
    try:
        return Path(Register.get_task_cls("colorize")().work_dir)
    except Exception:  # noqa: BLE001 - not loaded, or a bad --colorize-* value (the tasks report it)
        return Path(luigi.configuration.get_config().get("colorize", "work_dir", "work"))


class RunLogFile(logging.FileHandler):
    """Everything at the configured levels, with tracebacks, in a new file per process.
    A log that cannot be written (read-only or full disk) costs one warning line, not a
    traceback per record."""

    def __init__(self):
        global log_file
        name = f"luigi-{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}-{os.getpid()}.log"
        for folder in (_work_dir() / "logs", Path(tempfile.gettempdir()) / "colorize-fcn-logs"):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                super().__init__(folder / name, encoding="utf-8")
            except OSError:
                continue
            log_file = folder / name
            return
        super().__init__(os.devnull)

    def emit(self, record):
        if self.stream is not None:
            super().emit(record)

    def handleError(self, record):
        global log_file
        error = sys.exc_info()[1]
        print(f"colorize-fcn: warning: cannot write the log file {self.baseFilename} "
              f"({type(error).__name__}: {error}); it stops here", file=sys.stderr, flush=True)
        log_file = None
        stream, self.stream = self.stream, None     # emit() skips from now on
        try:
            stream.close()
        except OSError:                             # flushing the rest fails the same way
            pass


# ------------------------------------------------------------------------------ console
def _is_run_summary(record) -> bool:
    return isinstance(record.msg, str) and _RUN_SUMMARY in record.msg


def _reported_per_task(record) -> bool:
    """Luigi's messages for a failed task, each reported as one line by luigi_summary
    (message templates of luigi 3.8's worker.py: recheck on Luigi upgrades)."""
    msg = str(record.msg)
    return (msg.startswith(("[pid %s] Worker %s failed", "Luigi unexpected framework error while scheduling"))
            or (msg.startswith("Will not run ") and " due to error in " in msg))


def _shown(record) -> bool:
    if not record.pathname.startswith(_LUIGI_CODE):     # the project's own messages
        return True
    if _is_run_summary(record):
        return True
    return record.levelno >= logging.WARNING and not _reported_per_task(record)


def _one_line(text) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


class _ConsoleFormat(logging.Formatter):
    """LEVEL: message (Luigi's format); the per-task error lines as they are.  Brief (the
    default): an exception as one `(Type: message; traceback in <log>)`, Luigi's
    multi-line warnings cut to their first line, its run summary without `INFO:`.  Brief
    formatting leaves record.exc_text alone: the log file's formatter fills it with the
    whole traceback."""

    def __init__(self, brief: bool):
        super().__init__("%(levelname)s: %(message)s")
        self.brief = brief

    def format(self, record):
        if record.name == ERROR_LOGGER:
            return record.getMessage()
        if not self.brief:
            return super().format(record)
        text = record.getMessage()
        if _is_run_summary(record):
            return text.strip("\n")
        if record.pathname.startswith(_LUIGI_CODE):
            text = _one_line(text)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            where = f"; traceback in {log_file}" if log_file else ""
            text += f" ({type(error).__name__}: {_one_line(error)}{where})"
        return f"{record.levelname}: {text}"


class Console(logging.StreamHandler):
    """The console: sys.stderr as it is at each record (pytest swaps it per test), brief
    unless COLORIZE_DEBUG is set; after Luigi's run summary, run_summary_line() if
    anything failed."""

    def __init__(self):
        logging.Handler.__init__(self)
        self.setFormatter(_ConsoleFormat(brief=not debug()))
        if not debug():
            self.addFilter(_shown)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):     # StreamHandler.setStream: the console is always sys.stderr
        pass

    def emit(self, record):
        super().emit(record)
        if _is_run_summary(record) and run_problems():
            write_console(self.stream, run_summary_line() + "\n")

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], BrokenPipeError):    # `luigi ... | head`: the work goes on
            console_gone(self.stream)
        else:
            super().handleError(record)


def run_summary_line() -> str:
    """`colorize-fcn: 6 tasks failed; tracebacks and the full log: <log> (COLORIZE_DEBUG=1
    shows them here)`."""
    line = "colorize-fcn: " + ", ".join(run_problems())
    if log_file:
        line += f"; tracebacks and the full log: {log_file}"
        return line if debug() else line + f" ({DEBUG_ENV}=1 shows them here)"
    return line if debug() else line + f"; {DEBUG_ENV}=1 shows the tracebacks"
