"""`colorize-fcn serve`: every endpoint over HTTP, every bad upload, the queue, the command's
start and stop, and the page in a real headless Chromium (tests/browser.py).

The server runs in-process on an ephemeral loopback port with two tiny untrained runs
(tests/test_colorize.fake_run: K=4, 32 px)."""
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badfiles import BOMB_SIZE, write_odd_files
from browser import Chromium, find_chromium
from conftest import write_photo
from inference.cli import main
from inference.images import small_lightness
from inference.serve import model_checkpoints
from inference.serve_http import App, load_runs, start_server
from inference.serve_store import Store, cluster_palette, display_name
from models.registry import DECODERS
from test_colorize import ROOT, SIZE, _gmm, fake_run

MAX_UPLOAD = 200_000          # bytes, for the in-process server
MAX_PIXELS = 100_000


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders with different cluster colours; the first evaluated (done.json, eval-*/)."""
    work = tmp_path_factory.mktemp("serve")
    first = fake_run(work, name="fcn32s-c102-aaa")
    second = fake_run(work, gmm=_gmm(hues=(0.15, 0.4, 0.7, 0.85), chroma=0.35), name="fcn16s-c102-bbb")
    (first / "done.json").write_text(json.dumps({"complete": True, "iterations": 1, "best_iteration": 1}))
    (first / "eval-abc").mkdir()
    (first / "eval-abc" / "metrics.json").write_text(json.dumps(
        {"n_images": 4, "temperature": 0.38, "methods": {"model/annealed": {"auc": 81.5}}}))
    return work, first, second


@pytest.fixture(scope="module")
def server(runs):
    """(base URL, Store) of a server on an ephemeral loopback port."""
    work, first, second = runs
    store = Store(load_runs([first, second], "cpu"), max_pixels=MAX_PIXELS, cache_bytes=64 << 20)
    srv = start_server(App(store, MAX_UPLOAD), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.port}", store
    srv.shutdown()
    thread.join(5)


def request(base, method, path, data=None, headers=None):
    """(status, headers, body bytes); 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def upload(base, data, name="photo.png"):
    return request(base, "POST", f"/api/images?name={urllib.parse.quote(name)}", data)


def error_of(status, headers, body):
    """The refusal's one-line message (asserting it is one)."""
    assert headers["Content-Type"] == "application/json", (status, body)
    msg = json.loads(body)["error"]
    assert msg and "\n" not in msg and len(msg) < 300 and "Traceback" not in msg, msg
    return msg


def png(body) -> Image.Image:
    im = Image.open(io.BytesIO(body))
    assert im.format == "PNG"
    im.load()
    return im


def photo_bytes(tmp_path, size=(64, 48), seed=0, fmt="png") -> bytes:
    path = tmp_path / f"p{seed}-{size[0]}x{size[1]}.{fmt}"
    write_photo(path, seed=seed, size=size)
    return path.read_bytes()


def assert_serving(base):
    status, _, body = request(base, "GET", "/api/info")
    assert status == 200 and json.loads(body)["runs"]


# ----------------------------------------------------------------------------- endpoints
def test_page_is_plain_html_that_loads_nothing_from_elsewhere(server):
    base, _ = server
    status, headers, body = request(base, "GET", "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for element in ('id="files"', 'id="temperature"', 'id="decoder"', 'id="run"', "/api/info"):
        assert element in page
    assert not re.search(r"https?://", page)                       # no network at run time
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]


def test_info_describes_each_run_and_the_limits(server, runs):
    base, _ = server
    status, _, body = request(base, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200
    assert [r["name"] for r in info["runs"]] == ["fcn32s-c102-aaa", "fcn16s-c102-bbb"]
    first = info["runs"][0]
    assert (first["id"], first["arch"], first["iteration"], first["max_iteration"]) == ("0", "fcn32s", 1, 1)
    assert (first["im_size"], first["clusters"], first["note"]) == (SIZE, 4, None)
    assert first["evaluation"] == {"auc": 81.5, "n_images": 4, "temperature": 0.38, "folder": "eval-abc"}
    assert info["runs"][1]["evaluation"] is None
    assert info["limits"] == {"upload_bytes": MAX_UPLOAD, "pixels": MAX_PIXELS}
    assert info["decoders"] == list(DECODERS) and info["decoder"] == "annealed" and info["temperature"] == 0.38


def test_pictures_are_the_colorize_output_and_the_cluster_map(server, tmp_path):
    base, store = server
    data = photo_bytes(tmp_path, (64, 48))
    status, _, body = upload(base, data, "holiday.png")
    meta = json.loads(body)
    assert status == 201 and re.fullmatch(r"[0-9a-f]{16}", meta["id"])
    assert (meta["name"], meta["width"], meta["height"]) == ("holiday.png", 64, 48)
    image = Image.open(io.BytesIO(data))
    gray = png(request(base, "GET", f"/api/images/{meta['id']}/gray.png")[2])
    assert gray.mode == "L" and gray.size == (64, 48)
    assert abs(np.asarray(gray, float).mean() - np.asarray(image.convert("L"), float).mean()) < 3
    for run in ("0", "1"):
        model = store.runs[run].model
        for decoder, t in (("max", 0.38), ("mean", 0.38), ("annealed", 0.38), ("annealed", 0.9)):
            status, headers, body = request(
                base, "GET", f"/api/images/{meta['id']}/colour.png?run={run}&decoder={decoder}&temperature={t}")
            assert status == 200 and headers["Content-Type"] == "image/png"
            np.testing.assert_array_equal(np.asarray(png(body)),                    # what colorize gives
                                          np.asarray(model.colorize(image, decoder, t)))
    # the cluster map of an image at the network's size: each pixel its argmax cluster's colour
    data = photo_bytes(tmp_path, (SIZE, SIZE), seed=4)
    image_id = json.loads(upload(base, data)[2])["id"]
    model = store.runs["1"].model
    post = model.colorizer.posteriors(small_lightness(Image.open(io.BytesIO(data)).convert("RGB"), SIZE)[None])[0]
    palette = cluster_palette(model.colorizer.centres_ab.numpy())
    clusters = np.asarray(png(request(base, "GET", f"/api/images/{image_id}/clusters.png?run=1")[2]))
    np.testing.assert_array_equal(clusters, palette[post.argmax(0).numpy()])
    assert len(np.unique(post.argmax(0).numpy())) > 1                  # a map, not one flat colour


def test_redecoding_does_not_run_the_network_again(server, tmp_path, monkeypatch):
    base, store = server
    calls = []
    for run in store.runs.values():
        real = run.model.colorizer.posteriors
        monkeypatch.setattr(run.model.colorizer, "posteriors",
                            lambda L, real=real, run=run.id: calls.append(run) or real(L))
    image_id = json.loads(upload(base, photo_bytes(tmp_path, seed=2))[2])["id"]
    outputs = set()
    for query in ("temperature=0.38", "temperature=0.1", "temperature=0.7", "decoder=mean", "decoder=max"):
        status, _, body = request(base, "GET", f"/api/images/{image_id}/colour.png?run=0&{query}")
        assert status == 200
        outputs.add(body)
    assert request(base, "GET", f"/api/images/{image_id}/clusters.png?run=0")[0] == 200
    assert calls == ["0"] and len(outputs) == 5                    # one network run, five decodings
    assert request(base, "GET", f"/api/images/{image_id}/colour.png?run=1")[0] == 200
    assert request(base, "GET", f"/api/images/{image_id}/colour.png?run=1&temperature=0.7")[0] == 200
    assert calls == ["0", "1"]                                     # the same photo under the other run


# ----------------------------------------------------------------------------- refusals
def _bad_uploads(folder):
    odd = write_odd_files(folder)
    assert odd["bomb.png"] == "too_large"
    big = Image.fromarray(np.full((300, 400, 3), 120, np.uint8))   # 120,000 pixels > MAX_PIXELS
    buf = io.BytesIO()
    big.save(buf, "PNG")
    return {  # name -> (bytes, status, text in the message)
        "text.jpg": ((folder / "text.jpg").read_bytes(), 400, "not a recognised image file"),
        "truncated.jpg": ((folder / "truncated.jpg").read_bytes(), 400, "cannot decode"),
        "truncated.png": ((folder / "truncated.png").read_bytes(), 400, "cannot decode"),
        "corrupt.png": ((folder / "corrupt.png").read_bytes(), 400, "cannot decode"),
        "bomb.png": ((folder / "bomb.png").read_bytes(), 413,
                     f"exceeds the limit of {MAX_PIXELS} pixels (Image size ({BOMB_SIZE[0] * BOMB_SIZE[1]} pixels)"),
        "big.png": (buf.getvalue(), 413, f"400 x 300 pixels exceeds the limit of {MAX_PIXELS}"),
        "huge.bin": (os.urandom(MAX_UPLOAD + 1), 413, f"over the limit of {MAX_UPLOAD} bytes"),
        "empty.png": (b"", 400, "empty upload"),
    }


def test_every_bad_upload_is_a_one_line_4xx_and_the_server_goes_on(server, tmp_path):
    base, _ = server
    for name, (data, status, text) in _bad_uploads(tmp_path / "odd").items():
        t = time.perf_counter()
        got = upload(base, data, name)
        assert got[0] == status, (name, got)
        assert text in error_of(*got), name
        assert time.perf_counter() - t < 5, name                 # the bomb is refused from its header
        assert_serving(base)
    assert upload(base, photo_bytes(tmp_path))[0] == 201


def test_a_chunked_upload_without_length_stops_at_the_limit(server):
    base, _ = server
    conn = http.client.HTTPConnection(base.split("//")[1], timeout=30)
    try:
        conn.putrequest("POST", "/api/images?name=stream.png")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"\x89PNG" + b"x" * 65532
        try:
            for _ in range(MAX_UPLOAD // len(chunk) + 2):
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass                                                   # refused before the end
        r = conn.getresponse()
        assert r.status == 413
        assert f"over the limit of {MAX_UPLOAD} bytes" in error_of(r.status, r.headers, r.read())
    finally:
        conn.close()
    assert_serving(base)


def test_bad_requests_are_one_line_4xx(server, tmp_path):
    base, _ = server
    image_id = json.loads(upload(base, photo_bytes(tmp_path))[2])["id"]
    cases = {
        f"/api/images/{image_id}/colour.png?decoder=median": (400, "unknown decoder 'median'"),
        f"/api/images/{image_id}/colour.png?temperature=abc": (400, "temperature must be a number"),
        f"/api/images/{image_id}/colour.png?temperature=0": (400, "temperature must be in (0, 100]"),
        f"/api/images/{image_id}/colour.png?temperature=-1": (400, "temperature must be in"),
        f"/api/images/{image_id}/colour.png?temperature=nan": (400, "temperature must be in"),
        f"/api/images/{image_id}/colour.png?temperature=inf": (400, "temperature must be in"),
        f"/api/images/{image_id}/colour.png?run=9": (404, "no run '9'"),
        f"/api/images/{image_id}/clusters.png?run=x": (404, "no run 'x'"),
        "/api/images/0123456789abcdef/gray.png": (404, "upload it again"),
        "/api/images/nothex/colour.png": (404, "no such image"),
        "/api/nothing": (404, "404 Not Found"),
    }
    for path, (status, text) in cases.items():
        got = request(base, "GET", path)
        assert got[0] == status and text in error_of(*got), (path, got)
    for method, path in (("GET", "/api/images"), ("POST", "/"), ("DELETE", f"/api/images/{image_id}/gray.png")):
        got = request(base, method, path)
        assert got[0] == 405 and "Method Not Allowed" in error_of(*got)
    assert_serving(base)


def test_only_loopback_host_names_are_served(server):
    # DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 reads nothing
    base, _ = server
    port = base.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "192.168.1.5", "[2001:db8::1]:80"):
        got = request(base, "GET", "/api/info", headers={"Host": host})
        assert got[0] == 403 and "is not this machine's loopback name" in error_of(*got), host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2", "[::1]:8000", "LOCALHOST"):
        assert request(base, "GET", "/api/info", headers={"Host": host})[0] == 200, host


def test_a_silent_connection_is_dropped_and_a_bug_is_a_one_line_500(server, monkeypatch, capsys):
    import socket
    import inference.serve_http as serve_http
    base, store = server
    assert serve_http._QuietHandler.timeout == 60                      # seconds; 0.5 here
    monkeypatch.setattr(serve_http._QuietHandler, "timeout", 0.5)
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /api/info HTT")                            # and then nothing
        assert sock.recv(100) == b""                                  # closed by the server, not hanging
    monkeypatch.setattr(store, "gray_png", lambda image_id: 1 / 0)
    got = request(base, "GET", "/api/images/0123456789abcdef/gray.png")
    assert got[0] == 500 and error_of(*got) == "internal error: ZeroDivisionError: division by zero"
    err = capsys.readouterr().err
    assert err == "colorize-fcn: serve: GET /api/images/0123456789abcdef/gray.png: internal error: " \
                  "ZeroDivisionError: division by zero\n", err
    assert_serving(base)


_OPENED = []          # files opened by server threads while recording (an audit hook cannot be removed)
_RECORDING = threading.Event()


def _audit(event, args):
    if event == "open" and _RECORDING.is_set() and threading.current_thread() is not threading.main_thread():
        path = str(args[0])
        if not path.endswith((".py", ".pyc", ".so")):                # modules imported on first use
            _OPENED.append(path)


def test_names_and_paths_from_requests_never_reach_the_file_system(server, tmp_path):
    base, _ = server
    data = photo_bytes(tmp_path)
    upload(base, b"warm-up: PIL loads its plugins on first use", "x.txt")
    sys.addaudithook(_audit)
    names = {"../../../../tmp/evil.png": "evil.png", "/etc/passwd": "passwd", "..\\..\\win.png": "win.png",
             "a\x00b\n.png": "ab.png", "..": "image", "": "image", ".hidden.png": "hidden.png"}
    _RECORDING.set()
    try:
        for raw, shown in names.items():
            status, _, body = upload(base, data, raw)
            meta = json.loads(body)
            assert status == 201 and meta["name"] == shown, (raw, meta)
            assert request(base, "GET", f"/api/images/{meta['id']}/colour.png")[0] == 200
        for path in ("/api/images/..%2F..%2F..%2Fetc%2Fpasswd/gray.png", "/api/images/%2Fetc%2Fpasswd/gray.png",
                     "/../../../etc/passwd", "/api/images/../../etc/passwd"):
            assert request(base, "GET", path)[0] == 404, path
        conn = http.client.HTTPConnection(base.split("//")[1], timeout=30)     # unnormalised on the wire
        conn.request("GET", "/../../etc/passwd")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        _RECORDING.clear()
    assert _OPENED == []
    assert not (Path("/tmp") / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    assert display_name("x/" + "é" * 300) == "é" * 100


def test_the_network_runs_one_request_at_a_time_and_the_queue_is_bounded(server, tmp_path, monkeypatch):
    base, store = server
    ids = [json.loads(upload(base, photo_bytes(tmp_path, seed=s))[2])["id"] for s in range(6)]
    model = store.runs["0"].model
    real, active, peak, gate = model.colorizer.posteriors, [0], [0], threading.Event()

    def slow(L):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        gate.wait(10)
        time.sleep(0.02)
        active[0] -= 1
        return real(L)
    monkeypatch.setattr(model.colorizer, "posteriors", slow)
    monkeypatch.setattr(store, "max_waiting", 2)      # one computing, two waiting, the rest refused
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(request, base, "GET", f"/api/images/{i}/colour.png") for i in ids]
        deadline = time.monotonic() + 30                 # the first holds the network, two wait, three refused
        while (store._waiting < 3 or sum(f.done() for f in futures) < 3) and time.monotonic() < deadline:
            time.sleep(0.02)
        gate.set()
        results = [f.result() for f in futures]
    statuses = sorted(r[0] for r in results)
    assert peak[0] == 1
    assert statuses == [200] * 3 + [503] * 3, statuses
    assert all("busy" in error_of(*r) for r in results if r[0] == 503)
    assert [request(base, "GET", f"/api/images/{i}/colour.png")[0] for i in ids] == [200] * 6   # retried


def test_old_images_are_evicted_past_the_cache_size(server, tmp_path, monkeypatch):
    base, store = server
    first = json.loads(upload(base, photo_bytes(tmp_path, seed=3))[2])["id"]
    one = store.get(first).nbytes
    monkeypatch.setattr(store, "cache_bytes", 2 * one + one // 2)
    later = [json.loads(upload(base, photo_bytes(tmp_path, seed=s))[2])["id"] for s in (4, 5)]
    got = request(base, "GET", f"/api/images/{first}/gray.png")
    assert got[0] == 404 and "upload it again" in error_of(*got)
    assert all(request(base, "GET", f"/api/images/{i}/gray.png")[0] == 200 for i in later)


# ----------------------------------------------------------------------------- the command
def test_model_takes_runs_checkpoints_and_work_folders(runs, tmp_path, capsys):
    work, first, second = runs
    assert model_checkpoints([work]) == [second / "best.pt", first / "best.pt"]      # by name
    assert model_checkpoints([first, first / "best.pt", second]) == [first / "best.pt", second / "best.pt"]
    (tmp_path / "runs").mkdir()
    for bad, text in ((tmp_path / "nothing", "not a checkpoint file, a run folder"),
                      (tmp_path, "a work folder with no trained run")):
        assert main(["serve", "--model", str(bad), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot load model" in err and text in err, err


def test_a_port_in_use_and_a_host_off_loopback_are_one_line(runs, capsys, monkeypatch):
    import inference.serve_http as serve_http
    work, first, _ = runs
    taken = start_server(lambda environ, start_response: [], "127.0.0.1", 0)
    try:
        assert main(["serve", "--model", str(first), "--port", str(taken.port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{taken.port}" in err and "--port" in err, err
    finally:
        taken.server_close()
    # another host: a warning line (the socket is bound to loopback here all the same)
    real_start = serve_http.start_server
    monkeypatch.setattr(serve_http, "start_server", lambda app, host, port: real_start(app, "127.0.0.1", 0))
    monkeypatch.setattr(serve_http, "serve_until_stopped", lambda server, on_stop: (server.server_close(), on_stop()))
    assert main(["serve", "--model", str(first), "--host", "192.0.2.1", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning: --host 192.0.2.1 serves the page" in err and err.rstrip().endswith("serve: stopped"), err
    assert main(["serve", "--model", str(first), "--host", "127.0.0.2", "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_ctrl_c_and_sigterm_stop_it_in_one_line(runs):
    work, first, _ = runs
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {sig: subprocess.Popen([sys.executable, "-m", "inference", "serve", "--model", str(first), "--port", "0",
                                    "--device", "cpu"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for sig in (signal.SIGINT, signal.SIGTERM)}                  # started together: torch loads once each
    try:
        for sig, proc in procs.items():
            line = proc.stderr.readline()
            url = re.search(r"http://(\S+)/", line)
            assert url and "1 run(s)" in line, line
            assert request(f"http://{url.group(1)}", "GET", "/api/info")[0] == 200
            proc.send_signal(sig)
            assert proc.stderr.readline() == "colorize-fcn: serve: stopped\n"
            proc.send_signal(sig)                          # impatient: a second one while it leaves
            rest = proc.communicate(timeout=20)[1]
            assert proc.returncode == 0 and rest == "", (sig, proc.returncode, rest)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------- the page in a browser
def _pixels_js(selector):
    """JavaScript: a checksum of an <img>'s decoded pixels (drawn on a canvas)."""
    return (f"(() => {{ const img = document.querySelector({selector!r}); const c = document.createElement('canvas');"
            "c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
            "g.drawImage(img, 0, 0); const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;"
            "for (let i = 0; i < d.length; i++) s = (s * 31 + d[i]) % 1000000007; return [c.width, c.height, s]; })()")


def test_the_page_in_headless_chromium(server, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        reason = "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    base, _ = server
    photo = tmp_path / "garden.png"
    write_photo(photo, seed=5, size=(96, 64))
    with Chromium(chromium, tmp_path / "profile") as browser:
        browser.goto(base + "/")
        browser.wait_for("document.body && document.body.dataset.ready === '1'")
        assert "81.5% (annealed decoder, T=0.38) on 4 images" in browser.evaluate("document.body.innerText")
        browser.set_files("#files", [photo])
        browser.wait_for("document.querySelector('.card') && document.querySelector('.card').dataset.state === 'ready'")
        before = browser.evaluate(_pixels_js(".card img.colour"))
        assert before[:2] == [96, 64]
        assert browser.evaluate(_pixels_js(".card img.clusters"))[:2] == [96, 64]
        assert browser.evaluate("document.querySelector('.card a').download") == "garden-colorized.png"
        src = browser.evaluate("document.querySelector('.card img.colour').src")
        # click near the right end of the temperature slider, as a user would
        box = browser.evaluate("(() => { const r = document.getElementById('temperature').getBoundingClientRect();"
                               "return [r.left, r.top, r.width, r.height]; })()")
        browser.click(box[0] + 0.9 * box[2], box[1] + box[3] / 2)
        assert float(browser.evaluate("document.getElementById('temperature').value")) > 0.7
        browser.wait_for(f"document.querySelector('.card').dataset.state === 'ready' && "
                         f"document.querySelector('.card img.colour').src !== {src!r}")
        after = browser.evaluate(_pixels_js(".card img.colour"))
        assert after[:2] == [96, 64] and after[2] != before[2]          # the output image changed
        # the other run: the same photo, its own clusters
        clusters = browser.evaluate(_pixels_js(".card img.clusters"))
        src = browser.evaluate("document.querySelector('.card img.clusters').src")
        browser.evaluate("(() => { const r = document.getElementById('run'); r.value = '1';"
                         "r.dispatchEvent(new Event('change')); })()")
        browser.wait_for(f"document.querySelector('.card').dataset.state === 'ready' && "
                         f"document.querySelector('.card img.clusters').src !== {src!r}")
        assert browser.evaluate(_pixels_js(".card img.clusters"))[2] != clusters[2]
        assert "fcn16s-c102-bbb" in browser.evaluate("document.getElementById('run-info').innerText")
        # a bad upload: one line on the page, the rest stays
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not a PNG at all")
        browser.set_files("#files", [broken])
        assert browser.wait_for("document.querySelector('#messages li') && "
                                "document.querySelector('#messages li').textContent") == \
            "broken.png: not a recognised image file"
        assert browser.evaluate("document.querySelectorAll('.card').length") == 1
        shot = browser.screenshot(tmp_path / "serve-page.png")
    assert Image.open(shot).size[0] >= 800


def test_the_demo_ends_with_the_serve_command(tmp_path):
    from inference.cli import build_parser
    from inference.demo import demo_summary
    run = tmp_path / "runs" / "fcn16s-c101-abc"
    (run / "eval-x").mkdir(parents=True)
    (run / "done.json").write_text(json.dumps({"best_val_loss": 0.5, "best_iteration": 3}))
    (run / "inputs.json").write_text(json.dumps({"cfg": {"val_split": "train"}}))
    (run / "eval-x" / "metrics.json").write_text(json.dumps(
        {"n_images": 2, "methods": {"model/annealed": {"auc": 80.0, "mean_iou": 0.1}, "gray": {"auc": 70.0}}}))
    lines = [line for line in demo_summary([run], run / "eval-x", "c.png").splitlines() if " serve " in line]
    assert len(lines) == 1 and "http://127.0.0.1:8000/" in lines[0], lines
    argv = lines[0].split("colorize-fcn ")[1].split("   (")[0].split()
    args = build_parser().parse_args(argv)
    assert args.command == "serve" and args.model == [str(run)] and args.port == 8000


def test_read_image_still_names_a_file_gone_since_its_check(tmp_path, monkeypatch):
    # read_image now decodes through decode_image (shared with uploads); opening stays an InputError
    import inference.images as images
    monkeypatch.setattr(images, "check_image_file", lambda path: None)     # as if it went after the check
    with pytest.raises(images.InputError) as e:
        images.read_image(tmp_path / "gone.png")
    assert str(e.value) and "\n" not in str(e.value) and "gone.png" not in str(e.value)   # callers name the file
