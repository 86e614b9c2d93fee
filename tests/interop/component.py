"""An external component (XEP-0114) written with slixmpp's ComponentXMPP
exchanges messages with a slixmpp client through pushbox: the component
answers every message with an echo, and asks the client's server (pushbox)
for its version. A component with the wrong secret is refused.

Usage: component.py HOST C2S_PORT COMPONENT_PORT CA USER PASSWORD DOMAIN SECRET
Prints 'ok …' or 'FAIL …' per check and a closing 'N passed, N failed' line.
"""

import asyncio
import sys

import slixmpp

HOST, C2S, COMP, CA, USER, PW, DOMAIN, SECRET = sys.argv[1:9]
WAIT = 20
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


class Echo(slixmpp.ComponentXMPP):
    def __init__(self, secret):
        super().__init__(DOMAIN, secret, HOST, int(COMP))
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0092")
        self.ready = asyncio.get_event_loop().create_future()
        self.got = []
        self.add_event_handler("session_start", lambda _: self.ready.done() or self.ready.set_result(True))
        self.add_event_handler("disconnected", lambda _: self.ready.done() or self.ready.set_result(False))
        self.add_event_handler("message", self._message)

    def _message(self, msg):
        self.got.append(msg)
        if msg["type"] in ("chat", "normal"):
            msg.reply(f"echo: {msg['body']}").send()


class User(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{USER}@localhost", PW)
        self.ca_certs = CA
        self.register_plugin("xep_0030")
        self.online = asyncio.get_event_loop().create_future()
        self.replies = asyncio.Queue()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.replies.put_nowait(m))

    def _start(self, _):
        self.send_presence()
        self.online.set_result(True)


async def main():
    wrong = Echo("definitely-not-the-secret")
    wrong.connect()
    try:
        refused = not await asyncio.wait_for(wrong.ready, WAIT)
    except asyncio.TimeoutError:
        refused = True
    check("a component with the wrong secret is refused", refused)
    wrong.disconnect()

    echo = Echo(SECRET)
    echo.connect()
    try:
        ready = await asyncio.wait_for(echo.ready, WAIT)
    except asyncio.TimeoutError:
        ready = False
    check("ComponentXMPP completes the handshake", ready is True)

    user = User()
    user.connect(HOST, int(C2S))
    await asyncio.wait_for(user.online, WAIT)
    items = await user.plugin["xep_0030"].get_items(jid="localhost", timeout=WAIT)
    jids = [i[0] for i in items["disco_items"]["items"]]
    check("the server's disco#items lists the component", DOMAIN in jids, jids)

    user.send_message(mto=f"bot@{DOMAIN}", mbody="hello component", mtype="chat")
    try:
        reply = await asyncio.wait_for(user.replies.get(), WAIT)
    except asyncio.TimeoutError:
        reply = None
    check("the component received the client's message",
          any(m["body"] == "hello component" and m["from"].bare == f"{USER}@localhost" for m in echo.got),
          [str(m) for m in echo.got])
    check("the client received the component's answer",
          reply is not None and reply["body"] == "echo: hello component" and reply["from"].bare == f"bot@{DOMAIN}",
          reply and str(reply))

    # The component, as its domain, asks the server for its version.
    try:
        v = await echo.plugin["xep_0092"].get_version("localhost", ifrom=DOMAIN, timeout=WAIT)
        name = v["software_version"]["name"]
    except Exception as e:  # noqa: BLE001 - report any failure the same way
        name = repr(e)
    check("the component's IQ to the server is answered", name == "pushbox", name)

    user.disconnect()
    echo.disconnect()


asyncio.get_event_loop().run_until_complete(main())
passed = sum(results)
print(f"component: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
