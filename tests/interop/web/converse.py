"""Converse.js 14 in headless Chromium against pushbox: it is given only the
JID and password, finds the WebSocket endpoint through XEP-0156 host-meta
(https://localhost/.well-known/host-meta, port 443), logs in over
WebSocket, and exchanges a message with bob, a slixmpp client on TCP that
echoes. Chromium is driven over the DevTools protocol on a pipe
(tests/common/cdp.py, standard library only); screenshots are kept.

usage: converse.py CONVERSE_DIST SPKI_HASH ARTIFACT_DIR JID PASSWORD
Prints `ok ...` / `FAIL ...` lines.
"""
import functools
import http.server
import json
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "common"))
from cdp import Browser  # noqa: E402  (the shared DevTools client, tests/common/cdp.py)

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
    b = Browser(SPKI, ARTIFACTS)
    try:
        b.open_page(1200, 800, runtime=True)
        b.navigate(url, wait=False)
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
