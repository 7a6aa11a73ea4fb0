"""Luigi parameters whose bad command-line values are one error line and the
scheduling_error exit code, before any work (pipeline.luigi_summary.bad_command_line)."""
import luigi

from .config import CONFIGS, ConfigError, parse_overrides
from .luigi_summary import bad_command_line


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
