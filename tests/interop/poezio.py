"""poezio (Debian's, on its own slixmpp 1.8.3) in tmux against pushbox.

Usage: poezio.py HOST PORT CA TMUX_USER DAEMON_LOG

poezio must already be configured for carol@localhost (pw-c) in TMUX_USER's
home; this script runs it in a tmux session as that user (poezio refuses
root), reads its screen with capture-pane, and plays the other side with
slixmpp (this python's, 1.17) as dave@localhost (pw-d). Checks that poezio
logs in on its first connection, finds remote bookmark storage (and the
bookmark stored beforehand), and chats both ways; then checks the daemon's
log for the server's view of the same login.
"""

import asyncio
import re
import subprocess
import sys
import time

import slixmpp

HOST, PORT, CA, TMUX_USER, DAEMON_LOG = sys.argv[1:6]
PORT = int(PORT)
WAIT = 20
SOCKET = "pushbox-poezio"
results = []


def tmux(*args, check=True):
    return subprocess.run(
        ["runuser", "-u", TMUX_USER, "--", "tmux", "-L", SOCKET, *args],
        check=check, capture_output=True, text=True,
    ).stdout


def screen():
    return tmux("capture-pane", "-p", "-t", "poezio")


def wait_screen(what, pred, timeout=WAIT):
    end = time.time() + timeout
    while time.time() < end:
        s = screen()
        if pred(s):
            return s
        time.sleep(0.3)
    raise AssertionError(f"poezio never showed {what}; screen:\n{screen()}")


def command(text):
    # poezio opens its command line on "/" and drops keys typed in the same
    # burst: type the slash, then the rest, then Enter.
    tmux("send-keys", "-t", "poezio", "-l", "/")
    time.sleep(0.4)
    tmux("send-keys", "-t", "poezio", "-l", text)
    time.sleep(0.3)
    tmux("send-keys", "-t", "poezio", "Enter")


def check(name, fn):
    try:
        fn()
        print(f"ok   poezio: {name}")
        results.append(True)
    except Exception as e:  # noqa: BLE001 — any failure of a scenario is reported
        print(f"FAIL poezio: {name}: {e}")
        results.append(False)


class Peer(slixmpp.ClientXMPP):
    def __init__(self, user, pw):
        super().__init__(f"{user}@localhost", pw)
        self.ca_certs = CA
        self.inbox = asyncio.Queue()
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))

    async def login(self):
        self.connect(HOST, PORT)
        await asyncio.wait_for(self.online, WAIT)
        self.send_presence()
        return self


async def store_bookmark():
    """carol's bookmark in private XML, where poezio looks by default."""
    c = await Peer("carol", "pw-c").login()
    iq = c.make_iq_set()
    iq.append(slixmpp.ET.fromstring(
        "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
        "<conference jid='lounge@groups.localhost' name='Pushbox Lounge' autojoin='false'>"
        "<nick>carol</nick></conference></storage></query>"))
    await iq.send(timeout=WAIT)
    c.disconnect()
    await asyncio.sleep(0.5)


def log_lines():
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(DAEMON_LOG, encoding="utf-8", errors="replace").read())
    return text.splitlines()


async def main():
    await store_bookmark()
    dave = await Peer("dave", "pw-d").login()
    log_start = len(log_lines())
    tmux("kill-server", check=False)
    tmux("new-session", "-d", "-s", "poezio", "-x", "160", "-y", "45", "poezio")

    def logs_in():
        s = wait_screen("its JID", lambda s: "Your JID is carol@localhost/" in s)
        assert "Authentication success" in s, s
        assert "Disconnected" not in s and "End of stream" not in s, s
    check("logs in on the first connection", logs_in)

    def bookmarks():
        # poezio reports missing storage right after login; give it that moment.
        time.sleep(1.5)
        assert "No remote bookmark storage available" not in screen(), screen()
        command("bookmarks")
        s = wait_screen("the bookmarks tab", lambda s: "lounge@groups.localhost" in s)
        assert "Remote storage: privatexml" in s, s
        tmux("send-keys", "-t", "poezio", "C-g")
    check("finds remote bookmark storage and the stored bookmark", bookmarks)

    async def chat():
        command("message dave@localhost hello from poezio")
        m = None
        end = time.time() + WAIT
        while time.time() < end:
            try:
                m = await asyncio.wait_for(dave.inbox.get(), 1)
            except asyncio.TimeoutError:
                continue
            if m["body"] == "hello from poezio":
                break
        assert m is not None and m["body"] == "hello from poezio", "dave got nothing"
        assert str(m["from"]).startswith("carol@localhost/poezio"), m["from"]
        dave.send_message(mto=m["from"], mbody="hello poezio, this is slixmpp", mtype="chat")
        await asyncio.get_event_loop().run_in_executor(
            None, wait_screen, "dave's reply", lambda s: "hello poezio, this is slixmpp" in s)
    try:
        await chat()
        print("ok   poezio: chats with a slixmpp account both ways")
        results.append(True)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL poezio: chats with a slixmpp account both ways: {e}")
        results.append(False)

    def server_side():
        lines = log_lines()[log_start:]
        carol = [l for l in lines if "jid=carol@localhost/poezio" in l]
        started = [l for l in carol if "session started" in l]
        assert len(started) == 1, "\n".join(lines)
        bad = [l for l in lines if "authentication failed" in l or "closing the stream with an error" in l]
        assert not bad, "\n".join(bad)
        # The negotiation the client went through is visible, and was not counted.
        assert any("not counted" in l for l in lines), "\n".join(lines)
    check("the daemon saw one session, no failed login, no stream error", server_side)

    tmux("kill-server", check=False)
    dave.disconnect()


asyncio.get_event_loop().run_until_complete(main())
passed = sum(results)
print(f"poezio: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if all(results) else 1)
