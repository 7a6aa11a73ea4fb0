"""A sweep's experiments: --configs 14,32 x --overrides-grid '{"lr": [1e-5, 1e-6]}' (tasks.Sweep).

Every value is checked as --overrides are (pipeline.config.check_value), so a bad grid is one
error line before any work; the combinations come in a fixed order (configs as given, then
the grid's keys sorted, each key's values as given), so a sweep's runs and page are the same
on every rerun.
"""
import itertools
import json
from collections.abc import Mapping

import luigi

from .config import CONFIGS, ConfigError, check_value
from .luigi_summary import bad_command_line


def parse_configs(text) -> tuple:
    """'14,32' -> (14, 32): known config numbers, at least one, no repeats."""
    items = [x.strip() for x in str(text).split(",") if x.strip()] if not isinstance(text, (list, tuple)) \
        else list(text)
    try:
        numbers = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"--configs must be config numbers separated by commas, got {text!r}") from None
    unknown = [n for n in numbers if n not in CONFIGS]
    if not numbers or unknown or len(set(numbers)) != len(numbers):
        raise ConfigError(f"--configs {text!r}: {'unknown ' + str(unknown) if unknown else 'empty or repeated'}; "
                          f"valid configs: {sorted(CONFIGS)}")
    return numbers


def parse_grid(value) -> dict:
    """A JSON object {key: [value, ...]} (or such a mapping) -> the checked grid; {} = no grid."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--overrides-grid is not valid JSON ({e.msg} at column {e.colno}); write e.g. "
                              f"'{{\"lr\": [1e-5, 1e-6]}}'") from None
    if not isinstance(value, Mapping):
        raise ConfigError("--overrides-grid must be a JSON object of lists, e.g. '{\"lr\": [1e-5, 1e-6]}'")
    grid = {}
    for key, values in value.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"--overrides-grid: {key} must map to a non-empty list of values, got {values!r}")
        checked = [check_value(key, v, "overrides-grid") for v in values]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise ConfigError(f"--overrides-grid: {key} lists a value twice")
        grid[key] = checked
    return grid


def expand_grid(grid: Mapping) -> list:
    """Every combination as an overrides dict: keys sorted, values in the order given."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


class ConfigListParameter(luigi.Parameter):
    """--configs 14,32."""

    def parse(self, x):
        try:
            return ",".join(map(str, parse_configs(x)))
        except ConfigError as error:
            raise bad_command_line(error) from None


class OverridesGridParameter(luigi.Parameter):
    """--overrides-grid '{"lr": [1e-5, 1e-6]}', kept as canonical JSON text."""

    def parse(self, x):
        try:
            return json.dumps(parse_grid(x), sort_keys=True)
        except ConfigError as error:
            raise bad_command_line(error) from None
