"""`colorize-fcn serve`: a local page to look at what one or more runs do to your photos.

    colorize-fcn serve --model RUN [--model RUN2 | --model WORKDIR] [--port 8000] [--host 127.0.0.1]

The page (inference/serve_page.html) shows each run (architecture, config, iteration,
evaluation AuC), takes dropped or picked images, and shows per image the gray input, the
colorized output at full size and the predicted cluster map; the decoder and temperature
re-decode cached posteriors without running the network again.  The HTTP side is
inference/serve_http.py, what it holds in memory inference/serve_store.py.  This module
imports neither (nor torch), so `colorize-fcn --help` stays fast.
"""
import errno
import ipaddress
import sys
from pathlib import Path

MAX_UPLOAD_MB = 25                 # default upload limit, MiB of encoded file
MAX_PIXELS = 4096 * 4096           # default limit on an upload's pixels (~16.8 M), read from its header
CACHE_MB = 1024                    # default memory for uploads and their posteriors, MiB


def model_checkpoints(specs) -> list:
    """--model values -> checkpoint files: a .pt file, a run folder (its best.pt) or a work folder
    (the best.pt of every run under <work>/runs/, by name).  ValueError, one line, for any other."""
    from .runs import run_folders
    found = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            found.append(p)
        elif (p / "best.pt").is_file():
            found.append(p / "best.pt")
        elif (p / "runs").is_dir():
            runs = [r / "best.pt" for r in run_folders(p) if (r / "best.pt").is_file()]
            if not runs:
                raise ValueError(f"{p}: a work folder with no trained run (no runs/*/best.pt)")
            found += runs
        else:
            raise ValueError(f"{p}: not a checkpoint file, a run folder holding best.pt or a work folder "
                             "holding runs/")
    return list({c.resolve(): c for c in found}.values())       # each checkpoint once


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the command
def add_parser(sub, int_in, device_type) -> None:
    """The `serve` subcommand; int_in(lo, hi) and device_type are inference.cli's argument types."""
    positive_int = int_in(1)
    p = sub.add_parser("serve", help="a local web page to colorize photos with one or more runs",
                       description="Serve a page on which photos dropped or picked are colorized by the "
                                   "given runs, with the decoder and temperature set live.",
                       epilog="exit status: 0 stopped (Ctrl-C or SIGTERM), 2 bad arguments, a model that "
                              "cannot be loaded or an address that cannot be bound")
    p.add_argument("--model", action="append", required=True, metavar="RUN_OR_WORKDIR",
                   help="a run folder (its best.pt), a checkpoint file or a work folder (all its runs); "
                        "repeat for several runs")
    p.add_argument("--port", type=int_in(0, 65535), default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other warns)")
    p.add_argument("--device", type=device_type, default="auto", help="where the networks run (default auto)")
    p.add_argument("--max-upload-mb", type=positive_int, default=MAX_UPLOAD_MB,
                   help=f"largest upload in MiB (default {MAX_UPLOAD_MB})")
    p.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS,
                   help=f"most pixels of an upload (default {MAX_PIXELS})")
    p.add_argument("--cache-mb", type=positive_int, default=CACHE_MB,
                   help=f"memory for uploads and their posteriors in MiB, oldest evicted (default {CACHE_MB})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .api import ModelError
    from .serve_http import App, load_runs, serve_until_stopped, start_server
    from .serve_store import Store

    def say(kind, msg):
        sys.stderr.write(f"colorize-fcn: {kind}: {msg}\n")
    try:
        runs = load_runs(args.model, args.device, warn=lambda m: say("warning", m))
    except (ModelError, OSError, ValueError) as e:
        say("error", f"cannot load model: {' '.join(str(e).split())}")
        return 2
    for r in runs:
        if r.info["note"]:
            say("warning", r.info["note"])
    store = Store(runs, max_pixels=args.max_pixels, cache_bytes=args.cache_mb << 20)
    app = App(store, args.max_upload_mb << 20, loopback_only=is_loopback(args.host))
    try:
        server = start_server(app, args.host, args.port)
    except OSError as e:
        say("error", f"cannot listen on {args.host}:{args.port}: {e.strerror or e}"
                     f"{' (--port picks another)' if e.errno == errno.EADDRINUSE else ''}")
        return 2
    if not is_loopback(args.host):
        say("warning", f"--host {args.host} serves the page, and the models, to every machine that can "
                       "reach this one; there is no login")
    host = f"[{args.host}]" if ":" in args.host else args.host
    say("serve", f"{len(runs)} run(s) at http://{host}:{server.port}/ (Ctrl-C stops)")
    serve_until_stopped(server, on_stop=lambda: say("serve", "stopped"))      # leaves with status 0
    return 0                                   # where a test's stand-in for it returns
