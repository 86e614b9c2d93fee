"""A small Chrome DevTools Protocol client for headless Chromium, shared by the
browser suites (tests/invite/browser.py, tests/interop/web/converse.py).

Chromium runs with --remote-debugging-pipe: commands go on its fd 3, replies
and events come on its fd 4, each a JSON object ending in a NUL byte. Only the
standard library is needed. Import it with the directory of this file on
sys.path.
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time


def _dup_high(fd):
    """fd moved above 3 and 4, so that the child's dup2 cannot clobber it."""
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium that trusts exactly the certificate whose public
    key hashes to `spki` (base64 SHA-256), nothing more. Screenshots go to
    `artifacts`."""

    def __init__(self, spki, artifacts):
        self.artifacts = artifacts
        self.profile = tempfile.mkdtemp()
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        a, b = _dup_high(to_chrome_r), _dup_high(from_chrome_w)

        def child():
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                f"--ignore-certificate-errors-spki-list={spki}",
                "about:blank",
            ],
            preexec_fn=child, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(a)
        os.close(b)
        self.next_id = 0
        self.buf = b""
        self.session = None
        # Events not consumed yet, in order of arrival.
        self.events = []
        # Console messages and uncaught exceptions (with Runtime.enable), shown when a check fails.
        self.console = []

    def _read(self, deadline):
        """The next message; console output is kept aside in `console`."""
        while True:
            while b"\0" not in self.buf:
                if time.time() > deadline:
                    raise TimeoutError("no answer from chromium")
                chunk = os.read(self.from_chrome, 65536)
                if not chunk:
                    raise EOFError("chromium closed the pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            m = json.loads(raw)
            if m.get("method") == "Runtime.consoleAPICalled":
                args = m["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif m.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(m["params"]["exceptionDetails"])[:500])
            else:
                return m

    def call(self, method, params=None, session=True, timeout=30):
        """Send a command (to the attached page unless `session` is false) and return its result."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            if "method" in m:
                self.events.append(m)

    def wait_event_any(self, names, deadline):
        """The first event, queued or coming, whose method is one of `names`."""
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") in names:
                    del self.events[i]
                    return e
            m = self._read(deadline)
            if "method" in m:
                self.events.append(m)

    def wait_event(self, name, timeout=30):
        return self.wait_event_any([name], time.time() + timeout)

    def open_page(self, width, height, scale=1, mobile=False, network=False, runtime=False):
        """A new tab of the given size, attached; enables the Page domain, and
        Network and Runtime (console capture) if asked."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        self.call("Page.enable")
        if network:
            self.call("Network.enable")
        if runtime:
            self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})

    def navigate(self, url, wait=True):
        """Open `url`; with `wait`, return the main document's HTTP status
        once it has loaded (needs the Network domain)."""
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        return self.wait_for_load() if wait else None

    def wait_for_load(self, timeout=60):
        """Wait for the next page load; return the main document's HTTP status."""
        status = None
        deadline = time.time() + timeout
        while True:
            e = self.wait_event_any(["Network.responseReceived", "Page.loadEventFired"], deadline)
            if e["method"] == "Network.responseReceived" and e["params"].get("type") == "Document":
                status = e["params"]["response"]["status"]
            if e["method"] == "Page.loadEventFired":
                return status

    def eval(self, js):
        """The value of a JavaScript expression (a promise is awaited)."""
        r = self.call("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True})
        return r["result"].get("value")

    def wait_for(self, js, timeout=30):
        """Poll `js` until it is truthy (its value) or `timeout` seconds pass (None)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = self.eval(js)
            except RuntimeError:
                v = None
            if v:
                return v
            time.sleep(0.25)
        return None

    def screenshot(self, name, full_page=False):
        """A PNG in the artifacts directory; its path."""
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params)["data"]
        path = os.path.join(self.artifacts, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:  # pylint: disable=broad-exception-caught
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
