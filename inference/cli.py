"""`colorize-fcn` command line (also `python -m inference ...`).

    colorize-fcn colorize --model RUN_DIR_OR_CHECKPOINT INPUT... --out DIR
                          [--decoder max|mean|annealed] [--temperature 0.38]
                          [--batch-size N] [--device auto]

INPUTs are files, folders (searched recursively for image files) and glob
patterns (quote them so the shell leaves them alone, e.g. 'photos/**/*.jpg').
Each input becomes <DIR>/<name>.png at the input's full resolution; a folder's
files keep their relative paths.  An input that cannot be read is reported on
stderr in one line and the others go on.

Exit status: 0 all colorized, 1 some input failed, 2 bad arguments or the
model could not be loaded.
"""
import argparse
import sys

from models.registry import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE   # no torch: --help stays fast

from . import caches, runs


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorize-fcn", description="Colorize grayscale images with a trained FCN run.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("colorize", help="colorize image files, folders and globs",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Colorize images with a trained run; outputs keep the input's full "
                                   "resolution and lightness.",
                       epilog="examples:\n"
                              "  colorize-fcn colorize --model work/runs/fcn16s-c14-<sig> old_photos/ --out colour/\n"
                              "  colorize-fcn colorize --model best.pt 'scans/**/*.tif' --out colour/ --decoder mean\n"
                              "exit status: 0 all colorized, 1 some input failed (one 'error:' line each on\n"
                              "stderr), 2 bad arguments or the model could not be loaded")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--model", required=True, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a training run folder (its best.pt is used) or a checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the colorized PNGs")
    p.add_argument("--decoder", choices=list(DECODERS), default=DEFAULT_DECODER,
                   help=f"posteriors -> colour (default {DEFAULT_DECODER})")
    p.add_argument("--temperature", type=_positive_float, default=DEFAULT_TEMPERATURE,
                   help=f"annealed-mean temperature (default {DEFAULT_TEMPERATURE}, Zhang et al.)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per network batch (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=_positive_int, default=4, help="decode/write threads (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    runs.add_parser(sub)
    caches.add_parser(sub)
    return parser


def _warn(msg):
    sys.stderr.write(f"colorize-fcn: warning: {msg}\n")


def cmd_colorize(args) -> int:
    from pipeline.progress import Progress
    from .api import ModelError, load_colorizer
    from .files import collect_inputs, colorize_items, print_error
    try:
        model = load_colorizer(args.model, args.device, warn=_warn)
    except (ModelError, OSError, ValueError) as e:
        sys.stderr.write(f"colorize-fcn: error: cannot load model {args.model}: {' '.join(str(e).split())}\n")
        return 2
    if not model.finished:
        _warn(f"{model.source} comes from an unfinished run (iteration {model.iteration} of "
              f"{model.max_iteration}): its colours may improve when training completes")
    items, errors = collect_inputs(args.inputs, args.out)
    for raw, msg in errors:
        print_error(raw, msg)
    if not args.quiet:
        sys.stderr.write(f"colorize-fcn: {len(items)} image(s) -> {args.out} ({args.decoder} decoder"
                         f"{f', T={args.temperature}' if args.decoder == 'annealed' else ''}, "
                         f"network size {model.im_size}, {model.device})\n")
    bar = None if args.quiet or not items else Progress(len(items), "colorize")

    def done(src, dst):
        if bar:
            bar.update(1)

    def failed(src, msg):
        print_error(src, msg)
        done(src, None)

    result = colorize_items(model, items, args.decoder, args.temperature, args.batch_size, args.threads,
                            on_done=done, on_error=failed)
    n_failed = len(result["failed"]) + len(errors)
    if not args.quiet:
        sys.stderr.write(f"colorize-fcn: {result['ok']} colorized, {n_failed} failed\n")
    return 1 if n_failed else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "handler"):           # runs, gc
        return args.handler(args)
    if args.command == "colorize":
        return cmd_colorize(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
