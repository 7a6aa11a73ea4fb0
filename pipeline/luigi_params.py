"""Luigi parameters whose bad command-line values are one error line and the
scheduling_error exit code, before any work (pipeline.luigi_summary.bad_command_line);
check_named_task does the same for checks that need several parameters (keys that do
not fit together, memory)."""
import sys

import luigi
from luigi.cmdline_parser import CmdlineParser

from .config import CONFIGS, ConfigError, parse_overrides
from .luigi_summary import bad_command_line
from .memory import machine_memory, verdict


class OverridesParameter(luigi.DictParameter):
    """--overrides: a JSON object of config keys, checked by pipeline.config.parse_overrides
    (malformed JSON, not an object, unknown keys, bad values).  Rules between keys need the
    config: resolve_config checks them while scheduling."""

    def parse(self, x):
        try:
            return self.normalize(parse_overrides(x))
        except ConfigError as error:
            raise bad_command_line(error) from None


class ConfigNumberParameter(luigi.IntParameter):
    """--config: the number of an experiment config (pipeline.config.CONFIGS)."""

    def parse(self, x):
        try:
            number = int(x)
        except (TypeError, ValueError):
            raise bad_command_line(ConfigError(f"--config must be a config number, got {x!r}; "
                                               f"valid configs: {sorted(CONFIGS)}")) from None
        if number not in CONFIGS:
            raise bad_command_line(ConfigError(f"unknown config {number}; valid configs: {sorted(CONFIGS)}"))
        return number


def check_named_task(task, check) -> None:
    """When `task` is of the task family the `luigi` command line names, run check() now, while
    the command line is parsed: a ConfigError is one error line and the scheduling_error exit
    code before any work, not a scheduling failure with Luigi's run summary.  Elsewhere
    (luigi.build, tasks made while scheduling) the same error is the task's scheduling failure."""
    parser = CmdlineParser.get_instance()
    if parser is None or getattr(parser.known_args, "root_task", None) != task.get_task_family():
        return
    try:
        check()
    except ConfigError as error:
        raise bad_command_line(error) from None


def check_memory(needs_on, device: str, where: str) -> None:
    """Refuse what needs_on(device kind) (pipeline.memory.Need list) cannot fit in this machine's
    memory (pipeline.memory.verdict): at the `luigi` command line one line and the
    scheduling_error exit code, else a ConfigError; one warning line for each large need."""
    machine = machine_memory(device)
    try:
        for line in verdict(needs_on(machine.device_kind), machine, where):
            warn_once(line)
    except ConfigError as error:
        raise bad_command_line(error) from None


_warned = set()


def warn_once(line: str) -> None:
    """`colorize-fcn: warning: <line>` on stderr, once per process."""
    if line not in _warned:
        _warned.add(line)
        print(f"colorize-fcn: warning: {line}", file=sys.stderr, flush=True)
