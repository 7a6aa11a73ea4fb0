"""The `luigi` command line's own mistakes as one line each, never a traceback (README
"Set-up, logs and exit codes"):

  no task, or no task of that name      exit 2 (usage error), naming the closest tasks
  a value a parameter cannot parse      exit 35 (scheduling_error), naming the flag
  (e.g. --arch fcn16, --im-size abc)    (pipeline.luigi_summary.bad_command_line)

Luigi raises the first from CmdlineParser.__init__, outside run_with_retcodes' handler (a
traceback and exit 1), and catches the second as "Uncaught exception in luigi" (exit 40).
Both happen after `--module tasks` is imported, which imports this module: it wraps
Register.get_task_cls where the command-line parser calls it, CmdlineParser._get_task_kwargs
(the root task's own flags) and Parameter._value_iterator (every other command-line value).
These are private Luigi functions (luigi 3.8): recheck on upgrades; tests/test_luigi_cmdline.py
covers each case.

Without `--module tasks` Luigi imports nothing of the project, so nothing here can help:
main() is the project's `luigi` console script (pyproject.toml [project.scripts], installed
over Luigi's own by `make venv`), which is Luigi's with `--module tasks` added when the
command line names no module.
"""
import argparse
import difflib
import sys

import luigi
import luigi.retcodes
from luigi.cmdline_parser import CmdlineParser
from luigi.task_register import Register, TaskClassNotFoundException

from .luigi_summary import bad_command_line, refuse_without_config

TASKS_MODULE = "tasks"
USAGE_ERROR = 2


def _project_tasks() -> list:
    """The tasks of tasks.py a command line can name: not the bases others derive from."""
    ours = {name: cls for name, cls in Register._get_reg().items() if getattr(cls, "__module__", "") == TASKS_MODULE}
    return sorted(name for name, cls in ours.items()
                  if not any(other is not cls and issubclass(other, cls) for other in ours.values()))


def unknown_task_line(name) -> str:
    """`colorize-fcn: error: no task X; did you mean A, B? (tasks: ...)`: one line."""
    tasks = _project_tasks()
    if not tasks:
        return (f"colorize-fcn: error: no task {name}: Luigi loaded no tasks; add --module {TASKS_MODULE} "
                f"(luigi --module {TASKS_MODULE} {name} ...)")
    close = difflib.get_close_matches(name, tasks, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"colorize-fcn: error: no task {name}; {hint}(tasks: {', '.join(tasks)})"


_get_task_cls = Register.get_task_cls.__func__


def _get_task_cls_or_exit(cls, name):
    """Register.get_task_cls; called by Luigi's command-line parser for the root task's name,
    an unknown name ends the command with one line and exit 2."""
    try:
        return _get_task_cls(cls, name)
    except TaskClassNotFoundException:
        if sys._getframe(1).f_code is not CmdlineParser.__init__.__code__:
            raise
        print(unknown_task_line(name), file=sys.stderr, flush=True)
        raise SystemExit(USAGE_ERROR) from None


Register.get_task_cls = classmethod(_get_task_cls_or_exit)

_value_iterator = luigi.Parameter._value_iterator


def _value_iterator_or_exit(self, task_name, param_name):
    """Parameter._value_iterator; the first value it yields is the command line's (when one is
    being parsed), so a parse error before it is a bad command-line value."""
    from_command_line = CmdlineParser.get_instance() is not None
    try:
        for item in _value_iterator(self, task_name, param_name):
            yield item
            from_command_line = False
    except (ValueError, TypeError) as error:
        if not from_command_line:
            raise
        flag = "--" + f"{task_name}_{param_name}".replace("_", "-")
        raise bad_command_line(ValueError(f"{flag}: {error}")) from None


luigi.Parameter._value_iterator = _value_iterator_or_exit

def _get_task_kwargs_or_exit(self):
    """CmdlineParser._get_task_kwargs (the root task's own flags, e.g. --arch), as Luigi's but
    for a value that does not parse."""
    kwargs = {}
    for name, param in self._get_task_cls().get_params():
        text = getattr(self.known_args, name)
        if text:
            try:
                kwargs[name] = param.parse(text)
            except (ValueError, TypeError) as error:
                raise bad_command_line(ValueError(f"--{name.replace('_', '-')}: {error}")) from None
    return kwargs


CmdlineParser._get_task_kwargs = _get_task_kwargs_or_exit


# ------------------------------------------------------------------------------ the log folder
def work_dir_on_command_line(argv=None):
    """--colorize-work-dir as `argv` (default sys.argv[1:]) gives it, or None: for the log
    file of a command whose parsing failed (Luigi sets its logging up after the fact, when
    no parsed command line is left to ask)."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--colorize-work-dir")
    try:
        known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    return known.colorize_work_dir


# ------------------------------------------------------------------------------ the `luigi` command
def main(argv=None):
    """The project's `luigi`: Luigi's, with `--module tasks` when no --module is given, and
    `luigi` with no task one line, exit 2 (Luigi: "No task specified", exit 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    refuse_without_config(["luigi"])
    if not any(a == "--module" or a.startswith("--module=") for a in argv):
        argv = ["--module", TASKS_MODULE, *argv]
    try:
        luigi.retcodes.run_with_retcodes(argv)
    except SystemExit as stop:
        if isinstance(stop.code, str):            # Luigi's SystemExit("No task specified")
            print(f"colorize-fcn: error: {stop.code[:1].lower()}{stop.code[1:]}: luigi TASK [--flags] "
                  f"(tasks: {', '.join(_project_tasks())})", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_ERROR) from None
        raise


if __name__ == "__main__":
    main()
