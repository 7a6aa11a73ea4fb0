"""Exit codes of `luigi` runs under a central scheduler; tasks.py imports this.

With a central scheduler another `luigi` process may build tasks this one scheduled.
Luigi's run summary, and the exit code the `luigi` command makes from it, only know what
this process saw: such tasks count as "run by another worker" (retcode already_running)
or "not run" (retcode not_run) even when they, and the root task, are complete at the
end (spotify/luigi#1660).  Count the ones complete by then as already done, so that the
exit code is 0 when nothing failed and all the work is done, whoever did it.  This wraps
a private Luigi function (execution_summary._summary_dict): recheck on Luigi upgrades.
"""
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
