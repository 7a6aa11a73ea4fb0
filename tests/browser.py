"""Test helper: headless Chromium (Debian's package) driven over the DevTools protocol on a pipe.

Chromium's --remote-debugging-pipe reads JSON commands from its fd 3 and writes replies and
events to its fd 4, each message ending in a NUL byte: no driver binary, no websocket library,
and nothing that downloads a browser build.  `find_chromium()` is None when it is not
installed (`apt-get install chromium`).
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time

CANDIDATES = ("chromium", "chromium-browser")


def find_chromium():
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(Exception):
    pass


def _above_4(fd) -> int:
    """fd moved to a number >= 10, so that putting the pipe ends on 3 and 4 clobbers neither."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser with one page; `evaluate` runs JavaScript in it."""

    def __init__(self, binary, profile_dir, width=1280, height=1000, timeout=30.0):
        self.timeout, self._next_id, self._buf = timeout, 0, b""
        cmd_r, self._cmd_w = os.pipe()           # we write commands; the browser reads them as fd 3
        self._out_r, out_w = os.pipe()           # the browser writes fd 4; we read
        cmd_r, out_w = (_above_4(fd) for fd in (cmd_r, out_w))
        # --no-sandbox: CI runs as root; --disable-dev-shm-usage: containers have a small /dev/shm
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
                "about:blank"]
        # bash puts the pipe ends on fds 3 and 4 (Popen cannot name a child's fd numbers itself)
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", script, binary, *args], pass_fds=(cmd_r, out_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.send("Page.enable", session=True)
            self.send("Runtime.enable", session=True)
        except BaseException:
            self.close()
            raise

    # -- the protocol ------------------------------------------------------------------------
    def send(self, method, session=False, **params):
        """Send one command and return its result (events that arrive meanwhile are dropped)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise BrowserError(f"no reply from the browser within {self.timeout} s")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError("the browser exited")
            self._buf += chunk
        message, _, self._buf = self._buf.partition(b"\0")
        return json.loads(message)

    # -- what a test does --------------------------------------------------------------------
    def goto(self, url):
        self.send("Page.navigate", session=True, url=url)

    def evaluate(self, expression, await_promise=True):
        """The value of a JavaScript expression (a Promise is awaited)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=None):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def set_files(self, selector, paths):
        """Pick files in an <input type=file>, as the file dialog would (fires input and change)."""
        node = self.send("Runtime.evaluate", session=True, expression=f"document.querySelector({selector!r})")
        self.send("DOM.setFileInputFiles", session=True, files=[os.path.abspath(p) for p in paths],
                  objectId=node["result"]["objectId"])

    def click(self, x, y):
        """A left mouse click at page coordinates (CSS pixels)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            if self.proc.poll() is None:
                try:
                    os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._cmd_w, self._out_r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
