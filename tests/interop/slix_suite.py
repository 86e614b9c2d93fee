"""Interop suite: slixmpp (an independent client library) against the real
pushbox binary. Usage: slix_suite.py HOST STARTTLS_PORT DIRECT_TLS_PORT CA_PEM

Each scenario logs real accounts in and checks what arrives on the wire.
Prints one line per scenario and a closing 'N passed, N failed' line.
"""

import asyncio
import logging
import sys

import slixmpp
from slixmpp.exceptions import IqError

HOST, PORT, TLS_PORT, CA = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
DOMAIN = "localhost"
WAIT = 20


class Client(slixmpp.ClientXMPP):
    def __init__(self, user, password, direct_tls=False):
        super().__init__(f"{user}@{DOMAIN}", password)
        self.ca_certs = CA
        self.direct = direct_tls
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.inbox = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.subs = asyncio.Queue()
        self.online = asyncio.get_event_loop().create_future()
        self.failed = asyncio.get_event_loop().create_future()
        for p in ["xep_0030", "xep_0199", "xep_0092", "xep_0203"]:
            self.register_plugin(p)
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("failed_auth", lambda *_: self.failed.done() or self.failed.set_result(True))
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("presence_available", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("presence_subscribe", lambda p: self.subs.put_nowait(p))
        self.add_event_handler("presence_subscribed", lambda p: self.subs.put_nowait(p))
        # Answer subscription requests by hand, not automatically.
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False

    async def _start(self, _):
        if not self.online.done():
            self.online.set_result(True)

    async def login(self, presence=True):
        self.connect(HOST, TLS_PORT if self.direct else PORT)
        done, _ = await asyncio.wait([self.online, self.failed], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if self.online not in done:
            raise AssertionError(f"{self.boundjid} did not log in")
        await self.get_roster()
        if presence:
            self.send_presence()
        return self


async def expect(queue, what, pred=lambda x: True):
    async def loop():
        while True:
            x = await queue.get()
            if pred(x):
                return x
    try:
        return await asyncio.wait_for(loop(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}")


async def chat_starttls_and_direct_tls():
    a = await Client("alice", "pw-a").login()
    b = await Client("bob", "pw-b", direct_tls=True).login()
    await b.plugin["xep_0199"].ping(jid=DOMAIN, timeout=WAIT)
    a.send_message(mto=f"bob@{DOMAIN}", mbody="hi from slixmpp", mtype="chat")
    m = await expect(b.inbox, "message at bob", lambda m: m["body"] == "hi from slixmpp")
    assert str(m["from"]).startswith(f"alice@{DOMAIN}/"), m["from"]
    b.send_message(mto=str(m["from"]), mbody="reply", mtype="chat")
    r = await expect(a.inbox, "reply at alice", lambda m: m["body"] == "reply")
    assert r["type"] == "chat"
    a.disconnect(); b.disconnect()


async def subscription_handshake_and_presence():
    a = await Client("carol", "pw-c").login()
    b = await Client("dave", "pw-d").login()
    a.send_presence(pto=f"dave@{DOMAIN}", ptype="subscribe")
    req = await expect(b.subs, "subscribe at dave", lambda p: p["type"] == "subscribe")
    assert str(req["from"]) == f"carol@{DOMAIN}"
    b.send_presence(pto=f"carol@{DOMAIN}", ptype="subscribed")
    await expect(a.subs, "subscribed at carol", lambda p: p["type"] == "subscribed")
    p = await expect(a.presences, "dave's presence at carol", lambda p: str(p["from"]).startswith("dave@"))
    b.send_presence(pto=f"carol@{DOMAIN}", ptype="subscribe")
    await expect(a.subs, "subscribe at carol", lambda p: p["type"] == "subscribe")
    a.send_presence(pto=f"dave@{DOMAIN}", ptype="subscribed")
    await expect(b.subs, "subscribed at dave", lambda p: p["type"] == "subscribed")
    await expect(b.presences, "carol's presence at dave", lambda p: str(p["from"]).startswith("carol@"))
    await a.get_roster()
    sub = a.client_roster[f"dave@{DOMAIN}"]["subscription"]
    assert sub == "both", sub
    a.disconnect(); b.disconnect()


async def offline_message():
    a = await Client("erin", "pw-e").login()
    a.send_message(mto=f"frank@{DOMAIN}", mbody="stored for later", mtype="chat")
    await a.plugin["xep_0199"].ping(jid=DOMAIN, timeout=WAIT)
    b = await Client("frank", "pw-f").login()
    m = await expect(b.inbox, "offline message", lambda m: m["body"] == "stored for later")
    assert m["delay"]["stamp"] is not None
    a.disconnect(); b.disconnect()


async def disco_version_ping():
    a = await Client("alice", "pw-a").login(presence=False)
    info = await a.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=WAIT)
    feats = info["disco_info"]["features"]
    for f in ["msgoffline", "urn:xmpp:ping", "jabber:iq:version"]:
        assert f in feats, feats
    v = await a.plugin["xep_0092"].get_version(DOMAIN, timeout=WAIT)
    assert v["software_version"]["name"] == "pushbox", v
    rtt = await a.plugin["xep_0199"].ping(jid=DOMAIN, timeout=WAIT)
    assert rtt >= 0
    try:
        await a.plugin["xep_0030"].get_info(jid=f"nobody@{DOMAIN}", timeout=WAIT)
        raise AssertionError("disco on a missing account must fail")
    except IqError as e:
        assert e.condition == "service-unavailable", e.condition
    a.disconnect()


async def wrong_password_is_refused():
    c = Client("alice", "wrong")
    c.connect(HOST, PORT)
    done, _ = await asyncio.wait([c.online, c.failed], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    assert c.failed in done and c.online not in done, "login with a wrong password must fail"
    c.disconnect()


SCENARIOS = [
    chat_starttls_and_direct_tls,
    subscription_handshake_and_presence,
    offline_message,
    disco_version_ping,
    wrong_password_is_refused,
]


async def main():
    passed = failed = 0
    for s in SCENARIOS:
        try:
            await asyncio.wait_for(s(), 90)
            print(f"ok   slixmpp: {s.__name__}")
            passed += 1
        except Exception as e:  # report every scenario
            print(f"FAIL slixmpp: {s.__name__}: {type(e).__name__}: {e}")
            failed += 1
        await asyncio.sleep(0.2)
    return passed, failed


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    p, f = asyncio.run(main())
    print(f"slixmpp: {p} passed, {f} failed")
    sys.exit(1 if f else 0)
