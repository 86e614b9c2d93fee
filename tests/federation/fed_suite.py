"""Federation suite: slixmpp clients on pushbox (a.example) and on a real
peer server, checking what crosses the server-to-server boundary.

Usage: fed_suite.py LABEL SUFFIX A_PORT PEER_DOMAIN PEER_PORT [UNREACHABLE_DOMAIN BOUNCE_SECONDS]

Logs aliceSUFFIX@a.example into pushbox and bobSUFFIX@PEER_DOMAIN into the peer (both
over STARTTLS on 127.0.0.1), then runs each scenario; prints one line per
scenario ('ok ...' / 'FAIL ...').
"""

import asyncio
import logging
import ssl
import sys
import time

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

LABEL, SFX, A_PORT, PEER, PEER_PORT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
UNREACHABLE = sys.argv[6] if len(sys.argv) > 6 else None
BOUNCE_SECONDS = float(sys.argv[7]) if len(sys.argv) > 7 else 0
ALICE, BOB = f"alice{SFX}@a.example", f"bob{SFX}@{PEER}"
WAIT = 30


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, port):
        super().__init__(jid, password)
        self.port = port
        # The servers use self-signed certificates; this suite tests s2s, not c2s trust.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.enable_starttls = True
        self.inbox = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.presences = asyncio.Queue()
        self.subs = asyncio.Queue()
        self.online = asyncio.get_event_loop().create_future()
        # Caps with nick+notify (XEP-0115, XEP-0163, XEP-0172): PEP notifications
        # are sent to contacts whose caps ask for them.
        for p in ["xep_0030", "xep_0199", "xep_0092", "xep_0115", "xep_0163", "xep_0172"]:
            self.register_plugin(p)
        self.nicks = asyncio.Queue()
        self.add_event_handler("user_nick_publish", lambda m: self.nicks.put_nowait(m))
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", self._message)
        self.add_event_handler("presence_available", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("presence_subscribe", lambda p: self.subs.put_nowait(p))
        self.add_event_handler("presence_subscribed", lambda p: self.subs.put_nowait(p))
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False

    def _message(self, m):
        (self.errors if m["type"] == "error" else self.inbox).put_nowait(m)

    async def _start(self, _):
        if not self.online.done():
            self.online.set_result(True)

    async def login(self):
        self.connect("127.0.0.1", self.port)
        await asyncio.wait_for(self.online, WAIT)
        await self.get_roster()
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


async def messages(a, b):
    a.send_message(mto=BOB, mbody=f"hello {PEER}", mtype="chat")
    m = await expect(b.inbox, "message at bob", lambda m: m["body"] == f"hello {PEER}")
    assert str(m["from"]).startswith(ALICE + "/"), m["from"]
    b.send_message(mto=ALICE, mbody="hello a.example", mtype="chat")
    m = await expect(a.inbox, "message at alice", lambda m: m["body"] == "hello a.example")
    assert str(m["from"]).startswith(BOB + "/"), m["from"]


async def subscribe(x, y, y_jid, x_jid):
    """x asks y for a subscription, y approves; x must see subscribed and y's presence."""
    x.send_presence(pto=y_jid, ptype="subscribe")
    await expect(y.subs, f"subscribe at {y_jid}", lambda p: p["type"] == "subscribe" and p["from"].bare == x_jid)
    y.send_presence(pto=x_jid, ptype="subscribed")
    await expect(x.subs, f"subscribed at {x_jid}", lambda p: p["type"] == "subscribed" and p["from"].bare == y_jid)
    await expect(x.presences, f"{y_jid}'s presence at {x_jid}", lambda p: p["from"].bare == y_jid)


async def presence_both_ways(a, b):
    await subscribe(a, b, BOB, ALICE)
    await subscribe(b, a, ALICE, BOB)
    # Both rosters, as each server pushed them to its client, say "both".
    for c, other in ((a, BOB), (b, ALICE)):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if c.client_roster[other]["subscription"] == "both":
                break
            await asyncio.sleep(0.1)
        sub = c.client_roster[other]["subscription"]
        assert sub == "both", f"{c.boundjid.bare}'s subscription to {other}: {sub}"


async def iq_round_trips(a, b):
    await a.plugin["xep_0199"].ping(jid=PEER, timeout=WAIT)
    v = await b.plugin["xep_0092"].get_version("a.example", timeout=WAIT)
    assert v["software_version"]["name"], v
    # And a user-to-user IQ between clients: ping bob's full JID from alice.
    await a.plugin["xep_0199"].ping(jid=b.boundjid.full, timeout=WAIT)


async def pep_both_ways(a, b):
    """Each publishes a nickname (PEP); the contact's client on the other
    server gets the notification across the boundary."""
    for pub, sub, name, pub_jid in ((a, b, f"Alice {PEER}", ALICE), (b, a, "Bob a.example", BOB)):
        await pub.plugin["xep_0172"].publish_nick(name, timeout=WAIT)
        await expect(sub.nicks, f"{pub_jid}'s nickname at {sub.boundjid.bare}",
                     lambda m: m["from"].bare == pub_jid and name in str(m))


async def unreachable_bounces(a, b):
    start = time.monotonic()
    a.send_message(mto=f"nobody@{UNREACHABLE}", mbody="anyone?", mtype="chat")
    e = await expect(a.errors, "bounce", lambda m: m["from"].bare == f"nobody@{UNREACHABLE}")
    took = time.monotonic() - start
    cond = e["error"]["condition"]
    assert cond in ("remote-server-not-found", "remote-server-timeout"), cond
    print(f"     bounce after {took:.1f}s ({cond}; connect_timeout {BOUNCE_SECONDS:.0f}s)", flush=True)


async def main():
    logging.basicConfig(level=logging.ERROR)
    a = await Client(ALICE, "pw-a", A_PORT).login()
    b = await Client(BOB, "pw-b", PEER_PORT).login()
    scenarios = [messages, presence_both_ways, pep_both_ways, iq_round_trips]
    if UNREACHABLE:
        scenarios.append(unreachable_bounces)
    failed = 0
    for s in scenarios:
        try:
            await asyncio.wait_for(s(a, b), WAIT * 3)
            print(f"ok   {LABEL}: {s.__name__}", flush=True)
        except (AssertionError, IqError, IqTimeout, asyncio.TimeoutError) as e:
            failed += 1
            print(f"FAIL {LABEL}: {s.__name__}: {e!r}", flush=True)
    for c in (a, b):
        c.disconnect()
    await asyncio.sleep(0.5)
    return failed


if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)
