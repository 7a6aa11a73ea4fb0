"""`colorize-fcn` command line (also `python -m inference ...`).

    colorize-fcn colorize --model RUN_DIR_OR_CHECKPOINT INPUT... --out DIR
                          [--format png|jpg] [--quality Q]
                          [--skip-existing | --redo-changed | --overwrite]
                          [--size N] [--decoder max|mean|annealed] [--temperature 0.38]
                          [--batch-size N] [--device auto] [--threads N] [-q]
    colorize-fcn --version

INPUTs are files, folders (searched recursively for image files) and glob
patterns (quote them so the shell leaves them alone, e.g. 'photos/**/*.jpg').
Each input becomes <DIR>/<name>.png (or .jpg) at the input's full resolution; a
folder's files keep their relative paths.  An input that cannot be read is
reported on stderr in one line and the others go on.

Each output records which input it was made from (a digest of the input's path,
its size and mtime), so --skip-existing keeps only outputs made from the same
input; others are refused.  --redo-changed keeps those too and redoes (replaces)
the outputs made from an earlier version of their input.  Without --overwrite an output is never replaced, not
even one that another command writes into the same folder meanwhile.

Exit status: 0 all colorized, 1 some input failed, 2 bad arguments, refused
inputs (an input that names no file or folder, a symbolic link loop, a FIFO, a
pattern that matches nothing: all checked before the model loads) or outputs, an
unwritable --out (nothing was written) or the model could not be loaded, 75
interrupted (Ctrl-C or SIGTERM: the outputs written are complete, one line says
how many; rerun with --skip-existing), 130 interrupted before any work.

Each subcommand is one add_<name>(sub) function that registers its parser and
sets `run` to its command; parsing imports no torch, so --help stays fast.
"""
import argparse
import sys

from models.device import DEVICE_NAMES, check_device                        # no torch: --help stays fast
from models.registry import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE
from pipeline.signals import EXIT_STOPPED, sigterm_interrupts

from . import caches, compare, evaluations, runs, serve

PROG = "colorize-fcn"
_MAX_LISTED = 20               # existing outputs named one per line before "... and N more"


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _int_in(lo, hi=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {f'in {lo}..{hi}' if hi else f'>= {lo}'}, got {text}")
        return value
    return parse


_positive_int = _int_in(1)


def _device(text):
    try:
        return check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _VersionAction(argparse.Action):
    """--version, read from the installed package only when asked (importlib.metadata takes
    ~0.1 s, which --help should not pay)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__
        sys.stdout.write(f"{PROG} {__version__}\n")
        parser.exit()


def _say(kind, msg):
    sys.stderr.write(f"{PROG}: {kind}: {msg}\n")


def _warn(msg):
    _say("warning", msg)


# ----------------------------------------------------------------------------- colorize
def add_colorize(sub) -> None:
    p = sub.add_parser("colorize", help="colorize image files, folders and globs",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Colorize images with a trained run; outputs keep the input's full "
                                   "resolution, lightness and (PNG) alpha channel.",
                       epilog="examples:\n"
                              "  colorize-fcn colorize --model work/runs/fcn16s-c14-<sig> old_photos/ --out colour/\n"
                              "  colorize-fcn colorize --model best.pt 'scans/**/*.tif' --out colour/ --format jpg\n"
                              "inputs inside a training run folder or an evaluation folder are refused.\n"
                              "exit status: 0 all colorized, 1 some input failed (one 'error:' line each on\n"
                              "stderr), 2 bad arguments, refused inputs, outputs that exist already, an\n"
                              "unwritable --out (nothing is written) or the model could not be loaded,\n"
                              "75 interrupted (Ctrl-C, SIGTERM): what was written is complete; rerun with\n"
                              "--skip-existing")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--model", required=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a training run folder (its best.pt is used) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the colorized images")
    p.add_argument("--format", choices=["png", "jpg"], default="png",
                   help="output format (default png, which keeps an input's alpha channel; jpg files are "
                        "much smaller and faster to write (README: figures), and composite transparency "
                        "on white)")
    p.add_argument("--quality", type=_int_in(1, 100), default=None,
                   help="JPEG quality 1-100 (--format jpg only; default 90)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave outputs made from the same input alone (and do not colorize their "
                               "inputs); an existing output made from another input is refused")
    existing.add_argument("--redo-changed", action="store_true",
                          help="as --skip-existing, and redo (replace) the outputs made from an earlier "
                               "version of their input (it changed since); an output made from another "
                               "input is still refused")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace outputs that exist already (without either, they are refused)")
    p.add_argument("--size", type=_int_in(16, 4096), default=None, metavar="N",
                   help="side of the network's input in pixels (default: the size the model was trained "
                        "at); colour detail grows with it, up to what the model learnt")
    p.add_argument("--decoder", choices=list(DECODERS), default=DEFAULT_DECODER,
                   help=f"posteriors -> colour (default {DEFAULT_DECODER})")
    p.add_argument("--temperature", type=_positive_float, default=DEFAULT_TEMPERATURE,
                   help=f"annealed-mean temperature (default {DEFAULT_TEMPERATURE}, Zhang et al.)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per network batch (default 8)")
    p.add_argument("--device", type=_device, default="auto", help=f"{DEVICE_NAMES} (default auto)")
    p.add_argument("--threads", type=_positive_int, default=4, help="decode/write threads (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_colorize)


def _report_outputs(lines) -> None:
    for line in lines[:_MAX_LISTED]:
        _say("error", line)
    if len(lines) > _MAX_LISTED:
        _say("error", f"... and {len(lines) - _MAX_LISTED} more outputs that exist")


def _outputs_to_keep(existing, redo_changed=False):
    """--skip-existing: (outputs that record their input as it is now, one error line for each
    other, outputs to redo).  An output's name depends on the whole input set (clashes get -2,
    -3, ...), so a name alone does not say that the output was made from this input.
    redo_changed (--redo-changed): an output made from an earlier version of its input is to
    redo, not an error."""
    from .files import EARLIER_VERSION, output_mismatch
    kept, lines, redo = set(), [], set()
    for src, dst in existing:
        try:
            why = output_mismatch(src, dst)
        except OSError:
            continue          # an input that cannot be read is reported when it is read; dst stays
        if why and redo_changed and why.startswith(EARLIER_VERSION):
            redo.add(dst)
        elif why:
            hint = "--redo-changed redoes it, " if why.startswith(EARLIER_VERSION) else ""
            lines.append(f"{dst} exists but {why}; {hint}--overwrite replaces it")
        else:
            kept.add(dst)
    return kept, lines, redo


def cmd_colorize(args) -> int:
    from pipeline.progress import Progress
    from .api import ModelError, load_colorizer
    from .files import check_out_folder, collect_inputs, colorize_items, print_error
    from .images import DEFAULT_JPEG_QUALITY, FORMATS
    if args.quality is not None and args.format != "jpg":
        _say("error", "--quality applies to --format jpg only")
        return 2
    items, errors, refused = collect_inputs(args.inputs, args.out, FORMATS[args.format])
    for folder, msg in refused:
        print_error(folder, msg)
    existing = [(src, dst) for src, dst in items if dst.exists()]
    kept, lines, redo = set(), [], set()
    if existing and (args.skip_existing or args.redo_changed):
        kept, lines, redo = _outputs_to_keep(existing, args.redo_changed)
    elif existing and not args.overwrite:
        lines = [f"{dst} exists (--overwrite replaces it, --skip-existing keeps it)" for _, dst in existing]
    if refused or lines:
        _report_outputs(lines)
        return 2                                     # before any work: nothing was written
    if kept:
        items = [(src, dst) for src, dst in items if dst not in kept]
        if not items:                                # a finished rerun: no model to load
            for raw, msg in errors:
                print_error(raw, msg)
            if not args.quiet:
                sys.stderr.write(f"{PROG}: nothing to do: all {len(kept)} output(s) exist in {args.out}\n")
            return 1 if errors else 0
    try:
        check_out_folder(args.out)                   # before the model loads and any image is read
    except OSError as e:
        _say("error", f"--out: {e}")
        return 2
    try:
        model = load_colorizer(args.model, args.device, warn=_warn)
    except (ModelError, OSError, ValueError) as e:
        _say("error", f"cannot load model: {' '.join(str(e).split())}")
        return 2
    if not model.finished:
        _warn(f"{model.unfinished_note()}; its colours may improve when training completes")
    for raw, msg in errors:
        print_error(raw, msg)
    size = args.size or model.im_size
    if not args.quiet:
        skipped = (f", {len(kept)} skipped (output exists)" if kept else "") + \
            (f", {len(redo)} redone (input changed)" if redo else "")
        sys.stderr.write(f"{PROG}: {len(items)} image(s) -> {args.out}{skipped} ({args.decoder} decoder"
                         f"{f', T={args.temperature}' if args.decoder == 'annealed' else ''}, "
                         f"network size {size}, {args.format}, {model.device})\n")
    bar = None if args.quiet or not items else Progress(len(items), "colorize")
    written = []

    def done(src, dst):
        if dst is not None:
            written.append(dst)
        if bar:
            bar.update(1)

    def failed(src, msg):
        print_error(src, msg)
        done(src, None)

    result = {"ok": 0, "failed": [], "alpha_dropped": 0}
    try:
        with sigterm_interrupts():
            for replace, part in ((True, [i for i in items if args.overwrite or i[1] in redo]),   # only these
                                  (False, [i for i in items if not args.overwrite and i[1] not in redo])):
                if part:
                    got = colorize_items(model, part, args.decoder, args.temperature, args.batch_size,
                                         args.threads, on_done=done, on_error=failed, size=size, fmt=args.format,
                                         quality=args.quality or DEFAULT_JPEG_QUALITY, replace=replace)
                    result = {k: result[k] + got[k] for k in result}
    except KeyboardInterrupt:
        if bar:
            bar.close()
        _say("interrupted", f"all {len(items)} written; nothing left to do" if len(written) == len(items) else
             f"{len(written)} of {len(items)} written; rerun with --skip-existing")
        return EXIT_STOPPED
    if result["alpha_dropped"]:
        _warn(f"{result['alpha_dropped']} input(s) had an alpha channel, which JPEG cannot hold: they were "
              f"composited on white (--format png keeps it)")
    n_failed = len(result["failed"]) + len(errors)
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {result['ok']} colorized, {n_failed} failed\n")
    return 1 if n_failed else 0


# ----------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Colorize grayscale images with a trained FCN run.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_colorize(sub)
    evaluations.add_parser(sub)
    compare.add_parser(sub)
    runs.add_parser(sub)
    caches.add_parser(sub)
    serve.add_parser(sub, _int_in, _device)
    return parser


def _silence_pil_size_warning() -> None:
    """PIL warns (two raw lines on stderr) about images between its soft and hard pixel limits
    (~89 M and ~179 M pixels); inference.images.read_image applies the limit itself and refuses
    larger images in one error line, so the warning says nothing the user must act on."""
    import warnings
    from PIL import Image
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _silence_pil_size_warning()                      # after parsing: --help imports no PIL
    try:
        return args.func(args)
    except KeyboardInterrupt:                        # before any output (colorize says more then)
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
