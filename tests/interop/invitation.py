"""Invitations with slixmpp (issue 15): alice makes a contact invitation
with the XEP-0401 ad-hoc command, then a new client registers with its token
the way Monal does (only when the server offers `urn:xmpp:ibr-token:0`:
`<preauth/>`, then XEP-0077 registration, then login), and the two end as
mutual contacts. A second registration with the same token is refused.

Usage: invitation.py HOST PORT CA INVITER PASSWORD NEW_USER
Prints 'ok …' or 'FAIL …' per check and a closing 'N passed, N failed' line.
"""

import asyncio
import sys

import slixmpp
from slixmpp.stanza import Iq, StreamFeatures
from slixmpp.xmlstream import ElementBase, register_stanza_plugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatcherId

HOST, PORT, CA, INVITER, PW, NEW_USER = sys.argv[1:7]
WAIT = 20
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))


class IbrToken(ElementBase):
    """XEP-0445's stream feature."""
    name = "register"
    namespace = "urn:xmpp:ibr-token:0"
    plugin_attrib = "ibr_token"
    interfaces = set()


class PreAuth(ElementBase):
    name = "preauth"
    namespace = "urn:xmpp:pars:0"
    plugin_attrib = "preauth"
    interfaces = {"token"}


register_stanza_plugin(StreamFeatures, IbrToken)
register_stanza_plugin(Iq, PreAuth)


class Inviter(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{INVITER}@localhost", PW)
        self.ca_certs = CA
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0050")
        self.online = asyncio.get_event_loop().create_future()
        self.pushes = []
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("roster_update", lambda iq: self.pushes.append(iq))

    async def _start(self, _):
        await self.get_roster()
        self.send_presence()
        self.online.set_result(True)


class Registrant(slixmpp.ClientXMPP):
    """Registers like Monal: the token is sent only if ibr-token:0 is offered."""

    def __init__(self, user, pw, token):
        super().__init__(f"{user}@localhost", pw)
        self.ca_certs = CA
        self.token = token
        self.register_plugin("xep_0077")
        self.saw_feature = False
        self.preauth = None
        self.registered = None
        self.online = asyncio.get_event_loop().create_future()
        # Before XEP-0077's own handler (order 50).
        self.register_feature("ibr_token", self._ibr_token, restart=False, order=40)
        self.add_event_handler("register", self._register)
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))
        self.add_event_handler("failed_auth", lambda _: self.online.done() or self.online.set_result(False))

    async def _ibr_token(self, _features):
        self.saw_feature = True
        iq = self.Iq()
        iq["type"] = "set"
        iq["to"] = "localhost"
        iq["preauth"]["token"] = self.token
        # slixmpp sends only bind/session/register IQs before a session; the
        # preauth IQ goes out raw and its answer is matched by id.
        answer = asyncio.get_event_loop().create_future()
        self.register_handler(Callback("preauth", MatcherId(iq["id"]), answer.set_result))
        self.send_raw(str(iq))
        reply = await asyncio.wait_for(answer, WAIT)
        self.remove_handler("preauth")
        self.preauth = "accepted" if reply["type"] == "result" else reply["error"]["condition"]
        return False

    async def _register(self, _form):
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=WAIT)
            self.registered = "yes"
        except slixmpp.exceptions.IqError as e:
            self.registered = e.iq["error"]["condition"]
            self.disconnect()
            if not self.online.done():
                self.online.set_result(False)


async def main():
    alice = Inviter()
    alice.connect(HOST, int(PORT))
    await asyncio.wait_for(alice.online, WAIT)
    iq = await alice.plugin["xep_0050"].send_command("localhost", "urn:xmpp:invite#invite", timeout=WAIT)
    form = iq["command"]["form"]
    values = form.get_values()
    uri = values.get("uri", "")
    check("ad-hoc urn:xmpp:invite#invite answers a contact invitation URI",
          uri.startswith(f"xmpp:{INVITER}@localhost?roster;preauth=") and uri.endswith(";ibr=y"), values)
    check("the answer names an expiry", bool(values.get("expire")), values)
    token = uri.split("preauth=")[1].split(";")[0]

    bob = Registrant(NEW_USER, "pw-new-1", token)
    bob.connect(HOST, int(PORT))
    online = await asyncio.wait_for(bob.online, WAIT)
    check("the server offers urn:xmpp:ibr-token:0", bob.saw_feature)
    check("<preauth/> accepts the token", bob.preauth == "accepted", bob.preauth)
    check("XEP-0077 registration with the token", bob.registered == "yes", bob.registered)
    check("the new account logs in on the same connection", online is True)
    roster = await bob.get_roster()
    items = roster["roster"]["items"]
    sub = items.get(slixmpp.JID(f"{INVITER}@localhost"), {}).get("subscription")
    check("the new account has the inviter as a contact (both)", sub == "both", items)
    deadline = asyncio.get_running_loop().time() + WAIT
    while asyncio.get_running_loop().time() < deadline:
        if any(NEW_USER in str(p) for p in alice.pushes):
            break
        await asyncio.sleep(0.1)
    push = next((p for p in alice.pushes if NEW_USER in str(p)), None)
    check("the inviter's client gets a roster push with subscription both",
          push is not None and "both" in str(push), [str(p) for p in alice.pushes])
    bob.disconnect()

    again = Registrant(NEW_USER + "x", "pw-new-2", token)
    again.connect(HOST, int(PORT))
    try:
        await asyncio.wait_for(again.online, WAIT)
    except asyncio.TimeoutError:
        pass
    check("a used token is refused at <preauth/>", again.preauth == "item-not-found", again.preauth)
    check("and registration without it is refused", again.registered == "not-allowed", again.registered)
    again.disconnect()
    alice.disconnect()


asyncio.get_event_loop().run_until_complete(main())
passed = sum(results)
print(f"invitation: {passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
