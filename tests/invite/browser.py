"""The invitation page in a real browser: headless Chromium driven over the
DevTools protocol (on a pipe, so nothing but the standard library is needed),
with a phone-sized viewport. Fills the form, checks the account with slixmpp,
and keeps screenshots.

usage: browser.py URL C2S_PORT CA_FILE SPKI_HASH ARTIFACT_DIR
Prints `ok ...` / `FAIL ...` lines.
"""
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

URL, C2S_PORT, CA, SPKI, ARTIFACTS = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
USERNAME, PASSWORD = "webuser", "correct horse battery"
failed = 0


def check(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok   invite page: {name}")
    else:
        failed += 1
        print(f"FAIL invite page: {name} {detail}")


class Browser:
    """Chromium with --remote-debugging-pipe: commands on fd 3, replies on fd 4,
    each a JSON object ending in a NUL byte."""

    def __init__(self):
        self.profile = tempfile.mkdtemp()
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Move the child's ends above 3 and 4 so that dup2 cannot clobber them.
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
        self.events = []
        self.session = None

    def _read_message(self, deadline):
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
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, name, timeout=30):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == name:
                    del self.events[i]
                    return e
            self.events.append(self._read_message(deadline))

    def open_page(self):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        self.call("Page.enable")
        self.call("Network.enable")
        # A phone: 412 CSS pixels wide.
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 412, "height": 915, "deviceScaleFactor": 2, "mobile": True})

    def navigate(self, url):
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        return self.wait_for_load()

    def wait_for_load(self):
        """Wait for the next page load; return the main document's HTTP status."""
        status = None
        deadline = time.time() + 30
        while True:
            e = self.wait_event_any(["Network.responseReceived", "Page.loadEventFired"], deadline)
            if e["method"] == "Network.responseReceived" and e["params"].get("type") == "Document":
                status = e["params"]["response"]["status"]
            if e["method"] == "Page.loadEventFired":
                return status

    def wait_event_any(self, names, deadline):
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") in names:
                    del self.events[i]
                    return e
            self.events.append(self._read_message(deadline))

    def eval(self, js):
        r = self.call("Runtime.evaluate", {"expression": js, "returnByValue": True})
        return r["result"].get("value")

    def screenshot(self, name):
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
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


def dup_high(fd):
    import fcntl
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


async def xmpp_login(user, password):
    import slixmpp

    class Probe(slixmpp.ClientXMPP):
        def __init__(self):
            super().__init__(f"{user}@localhost/web", password)
            self.ok = asyncio.get_running_loop().create_future()
            self.add_event_handler("session_start", lambda _: self.ok.done() or self.ok.set_result(True))
            self.add_event_handler("failed_auth", lambda _: self.ok.done() or self.ok.set_result(False))

    c = Probe()
    c.ca_certs = CA
    c.connect("127.0.0.1", C2S_PORT)
    try:
        return await asyncio.wait_for(c.ok, 20)
    except asyncio.TimeoutError:
        return False
    finally:
        c.disconnect()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    b = Browser()
    try:
        b.open_page()
        status = b.navigate(URL)
        check("renders (200)", status == 200, f"status {status}")
        shot = b.screenshot("invite-page.png")
        check("screenshot kept", os.path.getsize(shot) > 10_000, shot)
        check("fits a phone screen (no sideways scrolling)",
              b.eval("document.documentElement.scrollWidth <= window.innerWidth") is True,
              b.eval("[document.documentElement.scrollWidth, window.innerWidth]"))
        check("no scripts on the page", b.eval("document.scripts.length") == 0)
        check("QR code drawn", (b.eval("(() => { const s = document.querySelector('.qr svg');"
                                       " return s ? s.getBoundingClientRect().width : 0 })()") or 0) >= 200)
        link = b.eval("document.querySelector('a.button').getAttribute('href')")
        check("xmpp: link offered", isinstance(link, str) and link.startswith("xmpp:localhost?register;preauth="),
              repr(link))
        # Fill the form the way a person would: focus each field and type.
        for field, value in [("username", USERNAME), ("password", PASSWORD), ("confirm", PASSWORD)]:
            b.eval(f"document.getElementById('{field}').focus()")
            b.call("Input.insertText", {"text": value})
        b.events.clear()
        b.eval("document.querySelector('button[type=submit]').click()")
        status = b.wait_for_load()
        text = b.eval("document.body.innerText") or ""
        b.screenshot("invite-created.png")
        check("form creates the account (200)", status == 200 and "Your account is ready" in text,
              f"status {status}: {text[:300]!r}")
        check("page names the new address", f"{USERNAME}@localhost" in text)
        ok = asyncio.run(xmpp_login(USERNAME, PASSWORD))
        check("the new account logs in over XMPP (slixmpp, SCRAM)", ok)
        status = b.navigate(URL)
        text = b.eval("document.body.innerText") or ""
        b.screenshot("invite-used.png")
        check("a used single-use invitation is refused (404)",
              status == 404 and "not valid" in text, f"status {status}: {text[:200]!r}")
    except Exception as e:  # a broken browser run is a failure, not a crash
        check("browser session", False, repr(e))
    finally:
        b.close()
    print(f"screenshots in {ARTIFACTS}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
