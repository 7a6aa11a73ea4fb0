"""The HTTP side of `colorize-fcn serve` (inference/serve.py is the command).

Endpoints (inference/serve_page.html is the page; every error is JSON {"error": "one line"}):

  GET  /                                    the page
  GET  /api/info                            the runs, decoders, defaults and limits (JSON)
  POST /api/images?name=NAME                the image file as the request body -> {id, name, width, height}
  GET  /api/images/ID/gray.png              the input's lightness at full size
  GET  /api/images/ID/colour.png?run=R&decoder=D&temperature=T   colorized at full size
  GET  /api/images/ID/clusters.png?run=R    the predicted clusters, each in its colour

Built on Werkzeug (README: "Look at a model"): its WSGI request/response objects, routing
and threaded server, with our own bounds on the request body.  Uploads live in memory
only (inference/serve_store.py): no request reads or writes a file.
"""
import json
import os
import signal
import socket
import sys
from pathlib import Path

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from models.registry import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE

from .serve import is_loopback
from .serve_store import MAX_TEMPERATURE, Run, ServeError, Store, run_info

PAGE = Path(__file__).with_name("serve_page.html")
# The page loads nothing from elsewhere: the browser enforces it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self' blob:; connect-src 'self'; form-action 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
URLS = Map([
    Rule("/", endpoint="page", methods=["GET"]),
    Rule("/api/info", endpoint="info", methods=["GET"]),
    Rule("/api/images", endpoint="upload", methods=["POST"]),
    Rule("/api/images/<image_id>/gray.png", endpoint="gray", methods=["GET"]),
    Rule("/api/images/<image_id>/colour.png", endpoint="colour", methods=["GET"]),
    Rule("/api/images/<image_id>/clusters.png", endpoint="clusters", methods=["GET"]),
])


def load_runs(specs, device="auto", warn=None) -> list:
    """Load every --model; raises inference.api.ModelError / ValueError with one line."""
    from .api import load_colorizer
    from .serve import model_checkpoints
    runs = []
    for i, ckpt in enumerate(model_checkpoints(specs)):
        model = load_colorizer(ckpt, device, warn=warn)
        runs.append(Run(str(i), model, run_info(model, ckpt)))
    return runs


# ----------------------------------------------------------------------------- the application
class App:
    """The WSGI application: routes requests to the Store; refusals are JSON one-liners."""

    def __init__(self, store: Store, max_upload_bytes: int, loopback_only: bool = True):
        self.store, self.max_upload_bytes = store, int(max_upload_bytes)
        self.loopback_only = loopback_only     # serving on loopback: refuse other Host names
        self.page = PAGE.read_bytes()          # read once, at start: no request names a file

    def info(self) -> dict:
        return {"runs": [{"id": r.id, **r.info} for r in self.store.runs.values()],
                "decoders": list(DECODERS), "decoder": DEFAULT_DECODER, "temperature": DEFAULT_TEMPERATURE,
                "max_temperature": MAX_TEMPERATURE,
                "limits": {"upload_bytes": self.max_upload_bytes, "pixels": self.store.max_pixels}}

    def dispatch(self, request: Request) -> Response:
        if self.loopback_only and not is_loopback(host_name(request.host)):
            # a page elsewhere whose name was made to point here (DNS rebinding) reads nothing
            raise ServeError(403, f"Host {request.host[:100]!r} is not this machine's loopback name")
        endpoint, args = URLS.bind_to_environ(request.environ).match()
        q = request.args
        if endpoint == "page":
            return Response(self.page, content_type="text/html; charset=utf-8")
        if endpoint == "info":
            return _json(self.info())
        if endpoint == "upload":
            upload = self.store.add(self._body(request), q.get("name"))
            return _json({"id": upload.id, "name": upload.name, "width": upload.rgb.size[0],
                          "height": upload.rgb.size[1]}, 201)
        if endpoint == "gray":
            png = self.store.gray_png(args["image_id"])
        elif endpoint == "colour":
            png = self.store.colour_png(args["image_id"], q.get("run", "0"), q.get("decoder", DEFAULT_DECODER),
                                        q.get("temperature", DEFAULT_TEMPERATURE))
        else:
            png = self.store.clusters_png(args["image_id"], q.get("run", "0"))
        return Response(png, content_type="image/png")

    def _body(self, request: Request) -> bytes:
        """The request body, refused (413) past max_upload_bytes before more of it is read.  A body
        without Content-Length (chunked) is read up to one byte past the limit: Werkzeug's own
        max_content_length would cut it at the limit, silently."""
        limit = self.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ServeError(413, f"upload of {request.content_length} bytes is over the limit of {limit} bytes")
        parts, size = [], 0
        while size <= limit:
            part = request.stream.read(limit + 1 - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:
            raise ServeError(413, f"upload is over the limit of {limit} bytes")
        return b"".join(parts)

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except ServeError as e:
            response = _json({"error": str(e)}, e.status)
        except HTTPException as e:             # no such route or method: 404 / 405
            response = _json({"error": f"{e.code} {e.name}: {request.method} {request.path}"}, e.code)
        except Exception as e:                 # a bug: one line on the page and in the terminal
            msg = f"internal error: {type(e).__name__}: {' '.join(str(e).split())}"[:300]
            sys.stderr.write(f"colorize-fcn: serve: {request.method} {request.path}: {msg}\n")
            response = _json({"error": msg}, 500)
        response.headers.update(SECURITY_HEADERS)
        return response(environ, start_response)


def host_name(host: str) -> str:
    """A Host header without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _json(obj, status=200) -> Response:
    return Response(json.dumps(obj), status=status, content_type="application/json")


# ----------------------------------------------------------------------------- the server
class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows the start line, internal errors and the stop line.
    A connection silent for `timeout` seconds is dropped (it would hold a thread forever)."""
    timeout = 60

    def log_request(self, code="-", size="-"):
        pass

    def log_error(self, format, *args):        # a client that went away mid-response
        pass


def start_server(app, host="127.0.0.1", port=0):
    """A threaded Werkzeug server bound to host:port (0: any free port; server.port says which),
    not yet serving.  OSError, one line, when the address cannot be bound.  The socket is bound
    here so that a port in use is our one-line error, not Werkzeug's exit."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(64)
        return make_server(host.strip("[]"), port, app, threaded=True, request_handler=_QuietHandler,
                           fd=sock.fileno())
    finally:
        sock.close()                           # the server holds its own duplicate


def serve_until_stopped(server, on_stop=None) -> None:
    """Serve until Ctrl-C or SIGTERM, close the socket, then end the process with status 0.
    Call it from the main thread: the first signal stops the server and later ones are
    ignored, so that a second Ctrl-C cannot interrupt the exit with a traceback.  The process
    ends with os._exit, without the interpreter's teardown: torch's native thread pools can
    abort a teardown ("terminate called without an active exception", exit -6, seen once in
    CI), and a server has nothing to save but what it has printed, which is flushed first."""
    def stop(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        server.serve_forever(poll_interval=0.2)        # Werkzeug's: returns on KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    if on_stop:
        on_stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
