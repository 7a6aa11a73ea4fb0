"""What a `luigi --module tasks` run reports: its exit code, one line per failed task and
what failed in all; tasks.py imports this.  (Console and log file: pipeline/luigi_logging.py.)

Exit codes.  With a central scheduler another `luigi` process may build tasks this one
scheduled.  Luigi's run summary, and the exit code the `luigi` command makes from it, only
know what this process saw: such tasks count as "run by another worker" (retcode
already_running) or "not run" (retcode not_run) even when they, and the root task, are
complete at the end (spotify/luigi#1660).  Count the ones complete by then as already done,
so that the exit code is 0 when nothing failed and all the work is done, whoever did it.
This wraps a private Luigi function (execution_summary._summary_dict): recheck on Luigi
upgrades.

Errors.  Every failed task -- bad config or dataset found while scheduling, an exception in
run(), a worker process that died -- is logged once, as it happens, as one line
`colorize-fcn: error: <Task>: <Type>: <message>` on the "colorize-fcn" logger; Luigi logs
the traceback.  A bad command-line value ends the command before any work with the
scheduling_error exit code and one such line (bad_command_line).  A training task stopped by
a signal ends the command with its own code (train.stop.TrainingStopped), after one line;
Ctrl-C or SIGTERM in any other stage ends it with pipeline.signals.EXIT_STOPPED, after one line.
"""
import logging
import sys
from pathlib import Path

import luigi
import luigi.configuration
import luigi.execution_summary
import luigi.retcodes
from luigi.cmdline_parser import CmdlineParser

from .builds import end_builds, mark_build
from .signals import Stopped, stop_requests

ERROR_LOGGER = "colorize-fcn"
_errors = logging.getLogger(ERROR_LOGGER)

_WAITED_ON = ("still_pending_not_ext", "run_by_other_worker", "upstream_run_by_other_worker", "not_run")
_luigi_summary_dict = luigi.execution_summary._summary_dict
_last_run = {}     # status -> number of tasks, of the latest run summary in this process


def _is_complete(task) -> bool:
    try:
        return bool(task.complete())
    except Exception:   # noqa: BLE001 - a task whose complete() fails stays where luigi put it
        return False


def _summary_dict(worker):
    end_builds()                 # called as the run ends: its caches are referenced or complete now
    sets = _luigi_summary_dict(worker)
    finished = {t for t in set().union(*(sets[k] for k in _WAITED_ON)) if _is_complete(t)}
    for key in _WAITED_ON:
        sets[key] -= finished
    sets["already_done"] |= finished
    _last_run.clear()
    _last_run.update({status: len(tasks) for status, tasks in sets.items()})
    return sets


luigi.execution_summary._summary_dict = _summary_dict


def run_problems() -> list:
    """What went wrong in the latest run, e.g. ['6 tasks failed']; [] when nothing did."""
    def n_tasks(n):
        return f"{n} task{'s' if n != 1 else ''}"
    problems = []
    if _last_run.get("failed"):
        problems.append(f"{n_tasks(_last_run['failed'])} failed")
    if _last_run.get("scheduling_error"):
        problems.append(f"{n_tasks(_last_run['scheduling_error'])} could not be scheduled")
    if _last_run.get("still_pending_ext"):
        problems.append(f"{n_tasks(_last_run['still_pending_ext'])} missing external data")
    return problems


# ------------------------------------------------------------------------------ one line each
_reported = set()


def _describe(error) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def error_line(task_family: str, what) -> str:
    """`colorize-fcn: error: <Task>: <first line of what>`."""
    lines = [line for line in str(what).splitlines() if line.strip()]
    return f"colorize-fcn: error: {task_family}: {lines[0] if lines else '?'}"


def report_error(task, what) -> None:
    """Log the task's error line, once per process."""
    line = error_line(task.get_task_family(), what)
    if line not in _reported:
        _reported.add(line)
        _errors.error(line)


_STILL_INCOMPLETE = "complete() is still returning false"     # luigi 3.8 worker.py, [worker] check_complete_on_run


def _missing_output(task):
    """The path of the first output missing at or below `task` (its requirements, depth first)."""
    for target in luigi.task.flatten(task.output()):
        if not target.exists():
            return getattr(target, "path", str(target))
    for required in luigi.task.flatten(task.requires()):
        missing = _missing_output(required)
        if missing:
            return missing
    return None


@luigi.Task.event_handler(luigi.Event.BROKEN_TASK)       # requires() raised while scheduling
@luigi.Task.event_handler(luigi.Event.FAILURE)           # run() raised
def _report_exception(task, exception):
    if _STILL_INCOMPLETE in str(exception):
        missing = _missing_output(task)
        report_error(task, f"it ran, but {missing or 'an output it needs'} is gone: deleted while this build "
                           "ran (by `colorize-fcn gc --min-age 0` in another shell, or by hand?); the same "
                           "command rebuilds it")
        return
    report_error(task, _describe(exception))


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
def _report_complete_error(task):
    """complete() raised while scheduling: Luigi passes no exception; ask again for its message
    (an external task whose data is missing comes here too, and raises nothing)."""
    try:
        task.complete()
    except Exception as exception:  # noqa: BLE001 - reported, as Luigi already failed the task
        report_error(task, _describe(exception))


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_PRESENT)   # scheduling: the run works in this work dir
@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
@luigi.Task.event_handler(luigi.Event.START)
def _mark_build(task):
    """pipeline.builds: `colorize-fcn gc` keeps what this run writes while it runs."""
    work_dir = getattr(task, "work_dir", None)
    if callable(work_dir):
        try:
            mark_build(work_dir())
        except Exception:  # noqa: BLE001 - a bad [colorize] setting: the task reports it
            pass


@luigi.Task.event_handler(luigi.Event.PROCESS_FAILURE)   # its worker process died (e.g. killed)
@luigi.Task.event_handler(luigi.Event.TIMEOUT)
def _report_death(task, message):
    report_error(task, message)


# ------------------------------------------------------------------------------ stop signals
_luigi_schedule_and_run = luigi.interface._schedule_and_run


def _schedule_and_run(*args, **kwargs):
    """Ctrl-C or SIGTERM stops the command without a traceback, with EXIT_STOPPED
    (pipeline/signals.py).  A training task saves a checkpoint first and raises a
    KeyboardInterrupt carrying its exit_code, after printing its one line
    (train.stop.TrainingStopped).  Any other stage stops at its next stop point (a task's
    start, a batch's next shard) with pipeline.signals.Stopped, whose line is printed here:
    what finished is kept and the same command goes on from there.  (luigi.interface._run and
    luigi.build look this name up when they run, after `--module tasks` has imported this
    module.)"""
    try:
        with stop_requests():
            return _luigi_schedule_and_run(*args, **kwargs)
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        if isinstance(e, Stopped):
            sys.stderr.write(str(e) + "\n")
        raise SystemExit(code) from None


luigi.interface._schedule_and_run = _schedule_and_run


# ------------------------------------------------------------------------------ the command line
def bad_command_line(error: Exception):
    """For a parameter's parse(): a value that fails it on the `luigi` command line ends the
    command with [retcode] scheduling_error and one error line, before any work.  (Raised
    from parse(), an exception would be Luigi's "Uncaught exception", a traceback and
    retcode unhandled_exception.)  Returns `error` to raise when no command line is being
    parsed (luigi.build, a task made from Python)."""
    parser = CmdlineParser.get_instance()
    if parser is None:
        return error
    task = getattr(parser.known_args, "root_task", None) or "luigi"
    print(error_line(task, _describe(error)), file=sys.stderr, flush=True)
    raise SystemExit(luigi.retcodes.retcode().scheduling_error)


def refuse_without_config(argv=None) -> None:
    """Exit 2 with one line when the `luigi` command runs without the project's luigi.cfg,
    which Luigi reads from the current folder: without it Luigi tries a central scheduler at
    localhost:8082 for a minute, every exit code is 0 (the [retcode] section is missing) and
    the settings are the code's defaults."""
    argv = sys.argv if argv is None else argv
    command = Path(argv[0] if argv else "")
    if "luigi" in (command.name, command.parent.name) and not luigi.configuration.get_config().has_section("colorize"):
        print(f"colorize-fcn: error: no luigi.cfg with a [colorize] section in {Path.cwd()}: run luigi from "
              "the repository folder (luigi.cfg and luigi-logging.ini are read from the current folder)",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
