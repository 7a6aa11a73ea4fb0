"""Using a trained colorizer: colorize images (API and files), evaluate, report, CLI.

    from inference import load_colorizer
    model = load_colorizer("work/runs/fcn16s-c14-<sig>")
    colour = model.colorize(pil_image_or_uint8_array)

    inference.api        load_colorizer, ImageColorizer
    inference.files      colorize files, folders and globs (`colorize-fcn colorize`)
    inference.evaluate   metrics of a run on held-out shards;  inference.report  its HTML report
    inference.cli        the `colorize-fcn` command

Names (and __version__) are resolved lazily, so `colorize-fcn --help` does not import torch.
"""
__all__ = ["load_colorizer", "ImageColorizer", "ModelError"]


def _installed_version() -> str:
    """The installed distribution's version (pyproject.toml's, the one source); '0+unknown' when
    the code runs from a checkout that was never pip-installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("colorize-fcn")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name):
    if name == "__version__":              # read when asked: importlib.metadata costs ~0.1 s
        globals()["__version__"] = _installed_version()
        return globals()["__version__"]
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
