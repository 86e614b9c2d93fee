"""Converse.js 14 in headless Chromium against pushbox: it is given only the
JID and password, finds the WebSocket endpoint through XEP-0156 host-meta
(https://localhost/.well-known/host-meta, port 443), logs in over
WebSocket, and exchanges a message with bob, a slixmpp client on TCP that
echoes. Chromium is driven over the DevTools protocol on a pipe (standard
library only); screenshots are kept.

usage: converse.py CONVERSE_DIST SPKI_HASH ARTIFACT_DIR JID PASSWORD
Prints `ok ...` / `FAIL ...` lines.
"""
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

DIST, SPKI, ARTIFACTS, JID, PASSWORD = sys.argv[1:6]
failed = 0

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pushbox + Converse.js</title>
<link rel="stylesheet" href="converse.min.css">
<script type="module" src="converse.min.js"></script></head>
<body class="converse-fullscreen"><script type="module">
window.seen = [];
converse.plugins.add("pushbox-test", {
  initialize() {
    const c = this._converse;
    window.conv = c;
    c.api.listen.on("message", (data) => {
      const body = data.attrs && data.attrs.body;
      if (body) window.seen.push(body);
    });
  },
});
converse.initialize({
  jid: JID, password: PASSWORD, auto_login: true,
  discover_connection_methods: true,
  view_mode: "fullscreen", theme: "concord",
  whitelisted_plugins: ["pushbox-test"],
  auto_reconnect: false, omemo_default: false, play_sounds: false,
  show_controlbox_by_default: true, loglevel: "info",
});
</script></body></html>
"""


def check(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok   converse.js: {name}")
    else:
        failed += 1
        print(f"FAIL converse.js: {name} {detail}")


def dup_high(fd):
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Browser:
    """Chromium with --remote-debugging-pipe: commands on fd 3, replies on
    fd 4, each a JSON object ending in a NUL byte."""

    def __init__(self):
        self.profile = tempfile.mkdtemp()
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        a, b = dup_high(to_chrome_r), dup_high(from_chrome_w)

        def child():
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                # Trust exactly the daemon's certificate (its public key), nothing more.
                f"--ignore-certificate-errors-spki-list={SPKI}",
                "about:blank",
            ],
            preexec_fn=child, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(a)
        os.close(b)
        self.next_id = 0
        self.buf = b""
        self.session = None
        # Console messages and uncaught exceptions, shown when a check fails.
        self.console = []

    def _read(self, deadline):
        while b"\0" not in self.buf:
            if time.time() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == "Runtime.consoleAPICalled":
                args = m["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif m.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(m["params"]["exceptionDetails"])[:500])
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.navigate", {"url": url})

    def eval(self, js):
        r = self.call("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True})
        return r["result"].get("value")

    def wait_for(self, js, timeout=30):
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

    def screenshot(self, name):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path = os.path.join(ARTIFACTS, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def serve_page():
    """The page and Converse's files over http://127.0.0.1 (a secure context)."""
    root = tempfile.mkdtemp()
    # Everything Converse loads lazily (chunks, fonts, sounds) sits beside it.
    for f in os.listdir(DIST):
        os.symlink(os.path.join(DIST, f), os.path.join(root, f))
    page = PAGE.replace("JID", json.dumps(JID)).replace("PASSWORD", json.dumps(PASSWORD))
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(page)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/index.html"


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    httpd, url = serve_page()
    b = Browser()
    try:
        b.open(url)
        online = b.wait_for("window.conv && window.conv.api.connection.connected() && "
                            "window.conv.session && window.conv.session.get('jid')", 40)
        check("logged in", bool(online) and online.startswith(JID), f"{online!r}")
        service = b.eval("window.conv && window.conv.api.connection.get() && window.conv.api.connection.get().service")
        check("found the WebSocket through host-meta", service == "wss://localhost/xmpp-websocket", f"{service!r}")
        b.screenshot("converse-online.png")
        sent = b.eval("""(async () => {
            const chat = await window.conv.api.chats.open('bob@localhost', {}, true);
            await chat.sendMessage({ body: 'hello from Converse.js' });
            return true; })()""")
        check("sent a message", sent is True, f"{sent!r}")
        echoed = b.wait_for("window.seen.includes('echo: hello from Converse.js')", 20)
        check("received the slixmpp client's answer", bool(echoed), b.eval("JSON.stringify(window.seen)"))
        shown = b.wait_for("document.body.innerText.includes('echo: hello from Converse.js')", 10)
        check("the answer is on screen", bool(shown))
        shot = b.screenshot("converse-chat.png")
        check("screenshot kept", os.path.getsize(shot) > 10_000, shot)
    except Exception as e:
        check("browser session", False, repr(e))
    finally:
        if failed:
            for line in b.console[-40:]:
                print(f"# console: {line[:300]}")
        b.close()
        httpd.shutdown()
    print(f"converse.js: {failed} failed")
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
