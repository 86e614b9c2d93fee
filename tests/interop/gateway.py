"""A real gateway as an external component: Biboumi (the XMPP-IRC gateway,
Debian's package) connects to pushbox with XEP-0114, and a slixmpp client
reaches it through pushbox: disco#info and software version of the gateway,
and a room join that the gateway answers with its messages about the IRC
connection and an error presence (no IRC server listens on the loopback
ports it tries).

Usage: gateway.py HOST PORT CA USER PASSWORD GATEWAY_DOMAIN
Prints 'ok …' or 'FAIL …' per check and a closing 'N passed, N failed' line.
"""

import asyncio
import sys
import xml.etree.ElementTree as ET

import slixmpp

HOST, PORT, CA, USER, PW, GATEWAY = sys.argv[1:7]
WAIT = 30
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


class User(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{USER}@localhost", PW)
        self.ca_certs = CA
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0092")
        self.online = asyncio.get_event_loop().create_future()
        self.presences = asyncio.Queue()
        self.messages = []
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.messages.append(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))

    def _start(self, _):
        self.send_presence()
        self.online.set_result(True)


async def main():
    c = User()
    c.connect(HOST, int(PORT))
    await asyncio.wait_for(c.online, WAIT)
    info = None
    for _ in range(30):  # the gateway may still be connecting
        try:
            info = await c.plugin["xep_0030"].get_info(jid=GATEWAY, timeout=WAIT)
            break
        except slixmpp.exceptions.IqError:
            await asyncio.sleep(0.5)
    identities = info["disco_info"]["identities"] if info else set()
    check("Biboumi answers disco#info through pushbox",
          any(i[0] == "conference" and i[1] == "irc" for i in identities), identities)
    try:
        v = await c.plugin["xep_0092"].get_version(GATEWAY, timeout=WAIT)
        name = v["software_version"]["name"]
    except Exception as e:  # noqa: BLE001 - report any failure the same way
        name = repr(e)
    check("Biboumi answers its software version", name == "biboumi", name)

    # Join an IRC channel on a loopback port where no IRC server listens: the
    # gateway's answer is a presence from the room JID, back to this session.
    room = f"#pushbox%127.0.0.1@{GATEWAY}"
    join = c.make_presence(pto=f"{room}/tester")
    join.append(ET.Element("{http://jabber.org/protocol/muc}x"))
    join.send()
    answer = None
    try:
        while True:
            p = await asyncio.wait_for(c.presences.get(), WAIT)
            if p["from"].bare == room.lower() or p["from"].bare == room:
                answer = p
                break
    except asyncio.TimeoutError:
        pass
    check("a room join reaches the gateway and its presence comes back",
          answer is not None and answer["to"].bare == c.boundjid.bare, answer and str(answer))
    check("the gateway's messages about the IRC connection reach the client",
          any(m["from"].domain == GATEWAY and "Connection failed" in m["body"] for m in c.messages),
          [str(m) for m in c.messages])
    c.disconnect()


asyncio.get_event_loop().run_until_complete(main())
passed = sum(results)
print(f"gateway: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
