"""XEP-0357 from pushbox to an app server on the other side: a pushbox user
(a.example) enables push at push.b.example, an XEP-0114 component (slixmpp)
attached to Prosody, goes offline and gets a message from a Prosody user.
pushbox publishes the notification over s2s; the component must receive
exactly one publish with the node and secret the client enabled.

usage: reverse_push.py A_C2S B_C2S B_COMPONENT_PORT COMPONENT_SECRET
Prints `ok ...` / `FAIL ...` lines.
"""
import asyncio
import ssl
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

A_C2S, B_C2S, B_COMP, COMP_SECRET = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
WAIT = 30
NODE, SECRET = "alice-phone-node", "s3cret-for-alice"
PUBSUB, DATA = "http://jabber.org/protocol/pubsub", "jabber:x:data"
failed = 0


async def answered(iq):
    """Whether the server answered the IQ with a result (an error or no
    answer is False, not an exception that would end the script)."""
    try:
        return (await iq.send(timeout=WAIT))["type"] == "result"
    except (IqError, IqTimeout):
        return False


def check(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok   reverse push: {name}")
    else:
        failed += 1
        print(f"FAIL reverse push: {name} {detail}")


class AppServer(slixmpp.ComponentXMPP):
    """The app server: answers every publish with a result and keeps it."""

    def __init__(self):
        super().__init__("push.b.example", COMP_SECRET, "127.0.0.1", B_COMP)
        self.publishes = []
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))
        self.register_handler(Callback(
            "publish", MatchXPath(f"{{{self.default_ns}}}iq/{{{PUBSUB}}}pubsub"), self._publish))

    def _publish(self, iq):
        if iq["type"] == "set":
            self.publishes.append(iq)
            iq.reply().send()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))

    async def login(self, port):
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.online, WAIT)
        self.send_presence()
        return self


def form_values(el, form_type):
    for x in el.iter(f"{{{DATA}}}x"):
        fields = {f.get("var"): f.findtext(f"{{{DATA}}}value") for f in x.iter(f"{{{DATA}}}field")}
        if fields.get("FORM_TYPE") == form_type:
            return fields
    return {}


async def main():
    app = AppServer()
    app.connect()
    await asyncio.wait_for(app.online, WAIT)
    alice = await Client("alice1@a.example/phone", "pw-a").login(A_C2S)
    iq = alice.make_iq_set()
    iq.append(ET.fromstring(
        f"<enable xmlns='urn:xmpp:push:0' jid='push.b.example' node='{NODE}'>"
        f"<x xmlns='{DATA}' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
        f"<field var='secret'><value>{SECRET}</value></field></x></enable>"))
    check("push enabled at a remote app server", await answered(iq))
    alice.disconnect()
    await asyncio.sleep(1)
    bob = await Client("bob1@b.example/pc", "pw-b").login(B_C2S)
    bob.send_message(mto="alice1@a.example", mbody="are you there?", mtype="chat")
    for _ in range(WAIT * 5):
        if app.publishes:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a duplicate would have arrived by now
    check("exactly one publish reached push.b.example over s2s", len(app.publishes) == 1,
          f"{len(app.publishes)} publishes")
    if app.publishes:
        p = app.publishes[0]
        x = p.xml
        publish = x.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
        # XEP-0357 §7: the user's server publishes from the user's bare JID.
        check("the publish is from the user's bare JID to the enabled node",
              str(p["from"]) == "alice1@a.example" and publish is not None and publish.get("node") == NODE,
              f"from {p['from']}, {ET.tostring(x)[:300]!r}")
        opts = form_values(x, "http://jabber.org/protocol/pubsub#publish-options")
        check("publish-options carry the secret", opts.get("secret") == SECRET, str(opts))
        summary = form_values(x, "urn:xmpp:push:summary")
        check("summary form with a message count", int(summary.get("message-count") or 0) >= 1, str(summary))
    bob.disconnect()
    app.disconnect()
    await asyncio.sleep(0.5)


asyncio.run(main())
sys.exit(1 if failed else 0)
