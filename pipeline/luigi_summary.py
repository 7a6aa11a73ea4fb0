"""Exit codes of `luigi` runs under a central scheduler; tasks.py imports this.

With a central scheduler another `luigi` process may build tasks this one scheduled.
Luigi's run summary, and the exit code the `luigi` command makes from it, only know what
this process saw: such tasks count as "run by another worker" (retcode already_running)
or "not run" (retcode not_run) even when they, and the root task, are complete at the
end (spotify/luigi#1660).  Count the ones complete by then as already done, so that the
exit code is 0 when nothing failed and all the work is done, whoever did it.  This wraps
a private Luigi function (execution_summary._summary_dict): recheck on Luigi upgrades.
"""
import atexit
import sys

import luigi
import luigi.execution_summary

_WAITED_ON = ("still_pending_not_ext", "run_by_other_worker", "upstream_run_by_other_worker", "not_run")
_luigi_summary_dict = luigi.execution_summary._summary_dict


def _is_complete(task) -> bool:
    try:
        return bool(task.complete())
    except Exception:   # noqa: BLE001 - a task whose complete() fails stays where luigi put it
        return False


def _summary_dict(worker):
    sets = _luigi_summary_dict(worker)
    finished = {t for t in set().union(*(sets[k] for k in _WAITED_ON)) if _is_complete(t)}
    for key in _WAITED_ON:
        sets[key] -= finished
    sets["already_done"] |= finished
    return sets


luigi.execution_summary._summary_dict = _summary_dict


# Errors found while scheduling (unknown config or key, missing dataset, bad split) reach
# the user as a traceback followed by Luigi's summary.  Repeat each as one line at exit,
# so the last thing on the screen says what is wrong.
_SCHEDULING_ERRORS = []


@luigi.Task.event_handler(luigi.Event.BROKEN_TASK)
def _remember_scheduling_error(task, exception):
    line = f"colorize-fcn: error: {task.get_task_family()}: {type(exception).__name__}: {exception}"
    line = line.splitlines()[0]
    if line not in _SCHEDULING_ERRORS:
        _SCHEDULING_ERRORS.append(line)


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_MISSING)
def _remember_complete_error(task):
    """Luigi passes no exception when complete() raised; ask again to get its message."""
    try:
        task.complete()
    except Exception as exception:  # noqa: BLE001 - reported, as Luigi already failed the task
        _remember_scheduling_error(task, exception)


def _print_scheduling_errors():
    for line in _SCHEDULING_ERRORS:
        print(line, file=sys.stderr)


atexit.register(_print_scheduling_errors)
