"""Group chat interop: slixmpp's own XEP-0045 plugin, an independent
client implementation, against the real pushbox binary: a room is created,
configured through the form the server sends, made a private group
(members-only, non-anonymous), members are added and join, messages,
history, subject, nick change, kick, ban and destruction go round; then
three slixmpp-omemo clients exchange an OMEMO-encrypted group message in
that private group, each decrypting it with the sender's real JID taken
from the room's presence.

Usage: muc.py HOST STARTTLS_PORT CA_PEM USER1 PW1 USER2 PW2 USER3 PW3 STRANGER PW

Prints one line per check ("ok ..." / "FAIL ...") and exits non-zero on failure.
"""

import asyncio
import logging
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
from typing import Any, List  # noqa: E402

import slixmpp  # noqa: E402
from slixmpp.exceptions import IqError, PresenceError  # noqa: E402

sys.path.append(_here)
import omemo_impl  # noqa: E402

HOST, PORT, CA = sys.argv[1], int(sys.argv[2]), sys.argv[3]
USERS = [(sys.argv[4], sys.argv[5]), (sys.argv[6], sys.argv[7]), (sys.argv[8], sys.argv[9])]
STRANGER = (sys.argv[10], sys.argv[11])
DOMAIN = "localhost"
SERVICE = f"groups.{DOMAIN}"
ROOM = slixmpp.JID(f"interop-{os.getpid()}@{SERVICE}")
WAIT = 60


class Client(slixmpp.ClientXMPP):
    def __init__(self, user: str, password: str, omemo: bool = True) -> None:
        super().__init__(f"{user}@{DOMAIN}", password)
        self.ca_certs = CA
        self.enable_direct_tls = False
        self.use_message_ids = True
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_event_loop()
        self.online = loop.create_future()
        self.omemo_ready = loop.create_future()
        for p in ["xep_0030", "xep_0004", "xep_0045", "xep_0060", "xep_0115", "xep_0163", "xep_0199", "xep_0334", "xep_0359", "xep_0421"]:
            self.register_plugin(p)
        if omemo:
            self.register_plugin("xep_0384", module=omemo_impl)
            self.add_event_handler("omemo_initialized", lambda *_: self.omemo_ready.done() or self.omemo_ready.set_result(True))
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("groupchat_message", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("groupchat_subject", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("message", lambda m: m["type"] != "groupchat" and self.inbox.put_nowait(m))
        self.add_event_handler("groupchat_presence", lambda p: self.presences.put_nowait(p))

    async def _start(self, _: Any) -> None:
        self.send_presence()
        if not self.online.done():
            self.online.set_result(True)


async def wait_for(what: str, aw) -> Any:
    try:
        return await asyncio.wait_for(aw, WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def next_message(c: Client, pred, what: str):
    async def loop():
        while True:
            m = await c.inbox.get()
            if pred(m):
                return m
    return await wait_for(what, loop())


async def next_presence(c: Client, pred, what: str):
    async def loop():
        while True:
            p = await c.presences.get()
            if pred(p):
                return p
    return await wait_for(what, loop())


def status_codes(p) -> List[int]:
    return [int(s) for s in p["muc"]["status_codes"]]


async def main() -> int:
    logging.basicConfig(level=getattr(logging, os.environ.get("MUC_LOG", "WARNING")))
    clients = [Client(u, p) for u, p in USERS]
    a, b, c = clients
    z = Client(*STRANGER, omemo=False)
    failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failed
        if ok:
            print(f"ok   muc: {what}", flush=True)
        else:
            failed += 1
            print(f"FAIL muc: {what} {detail}", flush=True)

    muc = lambda x: x.plugin["xep_0045"]  # noqa: E731
    try:
        for x in clients + [z]:
            x.connect(HOST, PORT)
        await wait_for("logins", asyncio.gather(*(x.online for x in clients + [z])))

        # Discovery: the domain lists the service, the service is a conference service.
        items = await a.plugin["xep_0030"].get_items(jid=DOMAIN)
        jids = [i[0] for i in items["disco_items"]["items"]]
        info = await a.plugin["xep_0030"].get_info(jid=SERVICE)
        report(SERVICE in jids and "http://jabber.org/protocol/muc" in info["disco_info"]["features"],
               "the domain lists groups.localhost, a MUC service", f"{jids}")

        # Creation: 201, then the configuration form, submitted as a private group.
        pres, _subject, _occ, _hist = await muc(a).join_muc_wait(ROOM, "Alice", maxstanzas=0, timeout=WAIT)
        report(201 in status_codes(pres) and 110 in status_codes(pres), "room created (201, 110)", str(status_codes(pres)))
        form = await muc(a).get_room_config(ROOM)
        fields = form.get_fields()
        report("muc#roomconfig_membersonly" in fields and "muc#roomconfig_whois" in fields, "owner gets the configuration form")
        form.set_values({
            "muc#roomconfig_roomname": "Interop group",
            "muc#roomconfig_persistentroom": True,
            "muc#roomconfig_membersonly": True,
            "muc#roomconfig_whois": "anyone",
            "muc#roomconfig_changesubject": True,
        })
        await muc(a).set_room_config(ROOM, form)
        info = await a.plugin["xep_0030"].get_info(jid=ROOM)
        feats = info["disco_info"]["features"]
        report("muc_membersonly" in feats and "muc_nonanonymous" in feats and "urn:xmpp:mam:2" in feats,
               "room disco#info shows a private, archived group", f"{feats}")

        # Members only: the stranger is refused until made a member.
        try:
            await muc(z).join_muc_wait(ROOM, "Zed", timeout=WAIT)
            report(False, "a non-member is refused")
        except PresenceError as e:
            report(e.condition == "registration-required", "a non-member is refused (registration-required)", e.condition)
        for x, nick in ((b, "Bob"), (c, "Carol")):
            await muc(a).set_affiliation(ROOM, "member", jid=x.boundjid.bare)
        members = await muc(a).get_affiliation_list(ROOM, "member")
        report(sorted(str(j) for j in members) == sorted([b.boundjid.bare, c.boundjid.bare]), "member list", f"{members}")

        # Messages and history.
        a.send_message(mto=ROOM, mbody="first words", mtype="groupchat")
        await next_message(a, lambda m: m["body"] == "first words", "reflection")
        _p, _s, occupants, history = await muc(b).join_muc_wait(ROOM, "Bob", maxstanzas=5, timeout=WAIT)
        report(any(h["body"] == "first words" for h in history), "history on join, stamped by the room", f"{len(history)}")
        report(muc(b).get_jid_property(ROOM, "Alice", "jid").bare == a.boundjid.bare, "non-anonymous: real JIDs visible")
        await muc(c).join_muc_wait(ROOM, "Carol", maxstanzas=0, timeout=WAIT)
        b.send_message(mto=ROOM, mbody="hello all", mtype="groupchat")
        got = await next_message(c, lambda m: m["body"] == "hello all", "bob's message at carol")
        report(got["from"] == slixmpp.JID(f"{ROOM}/Bob") and bool(got["stanza_id"]["id"]) and bool(got["occupant-id"]["id"]),
               "message with stanza-id and occupant-id", str(got))

        # Subject (members may change it here), nick change, private message.
        muc(b).set_subject(ROOM, "Interop")
        s = await next_message(c, lambda m: m["subject"] == "Interop", "subject")
        report(s["from"].resource == "Bob", "subject set by a member")
        await muc(c).set_self_nick(ROOM, "Caroline")
        p = await next_presence(a, lambda p: p["from"].resource == "Caroline" and p["type"] != "unavailable", "nick change")
        report(True, "nick change seen by others")
        a.send_message(mto=slixmpp.JID(f"{ROOM}/Caroline"), mbody="just for you", mtype="chat")
        pm = await next_message(c, lambda m: m["body"] == "just for you", "private message")
        report(pm["from"] == slixmpp.JID(f"{ROOM}/Alice"), "private message between occupants")

        # OMEMO in the private group: Alice encrypts for Bob's and Carol's devices.
        await wait_for("OMEMO set-up", asyncio.gather(*(x.omemo_ready for x in clients)))
        msg = a.make_message(mto=ROOM, mtype="groupchat")
        msg["body"] = "a secret for the group"
        encrypted, errors = await a.plugin["xep_0384"].encrypt_message(
            msg, [slixmpp.JID(b.boundjid.bare), slixmpp.JID(c.boundjid.bare)]
        )
        if encrypted is None:
            raise AssertionError(f"nothing to send: {errors}")
        encrypted.send()
        for x in (b, c):
            m = await next_message(x, lambda m: bool(x.plugin["xep_0384"].is_encrypted(m)), "an encrypted group message")
            dec, _dev = await x.plugin["xep_0384"].decrypt_message(m)
            report(dec["body"] == "a secret for the group", f"{x.boundjid.bare} decrypts the OMEMO group message", repr(dec["body"]))

        # Kick, ban, destroy.
        await muc(a).set_role(ROOM, "Caroline", "none", reason="testing")
        p = await next_presence(c, lambda p: 307 in status_codes(p), "kick")
        report(True, "kick (307)")
        await muc(a).set_affiliation(ROOM, "outcast", jid=c.boundjid.bare, reason="testing")
        try:
            await muc(c).join_muc_wait(ROOM, "Carol", timeout=WAIT)
            report(False, "a banned user is refused")
        except PresenceError as e:
            report(e.condition == "forbidden", "a banned user is refused (forbidden)", e.condition)
        await muc(a).destroy(ROOM, reason="done", altroom=f"elsewhere@{SERVICE}")
        p = await next_presence(b, lambda p: p["type"] == "unavailable" and p["muc"]["destroy"]["jid"] != "", "destroy")
        report(str(p["muc"]["destroy"]["jid"]) == f"elsewhere@{SERVICE}", "destroy with an alternate venue")
        try:
            await a.plugin["xep_0030"].get_info(jid=ROOM)
            report(False, "a destroyed room is gone")
        except IqError as e:
            report(e.condition == "item-not-found", "a destroyed room is gone (item-not-found)", e.condition)
    except Exception as e:  # pylint: disable=broad-exception-caught
        report(False, "scenario", f"{type(e).__name__}: {e}")
    finally:
        for x in clients + [z]:
            x.disconnect()
        await asyncio.sleep(0.5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
