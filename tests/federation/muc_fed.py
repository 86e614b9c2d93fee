"""Group chat across servers: a user of the peer server joins a room on
pushbox's groups.a.example and chats; a pushbox user joins a room on the
peer's MUC service and chats.

Usage: muc_fed.py LABEL SUFFIX A_PORT PEER_DOMAIN PEER_PORT PEER_MUC

Prints one line per check ('ok ...' / 'FAIL ...').
"""

import asyncio
import logging
import os
import ssl
import sys

import slixmpp

LABEL, SFX, A_PORT, PEER, PEER_PORT, PEER_MUC = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
)
ALICE, BOB = f"alice{SFX}@a.example", f"bob{SFX}@{PEER}"
WAIT = 30


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, port):
        super().__init__(jid, password)
        self.port = port
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.enable_direct_tls = False
        self.inbox = asyncio.Queue()
        self.online = asyncio.get_event_loop().create_future()
        for p in ["xep_0030", "xep_0004", "xep_0045", "xep_0199"]:
            self.register_plugin(p)
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("groupchat_message", lambda m: self.inbox.put_nowait(m))

    async def _start(self, _):
        self.send_presence()
        if not self.online.done():
            self.online.set_result(True)


async def wait_for(what, aw):
    try:
        return await asyncio.wait_for(aw, WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def hear(c, room, nick, body):
    async def loop():
        while True:
            m = await c.inbox.get()
            if m["body"] == body and m["from"].bare == room and m["from"].resource == nick:
                return m
    return await wait_for(f"{body!r} from {room}/{nick} at {c.boundjid.bare}", loop())


async def create(c, room, nick):
    """Join (creating the room) and submit an instant configuration."""
    pres, *_ = await c.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), nick, maxstanzas=0, timeout=WAIT)
    if 201 in [int(s) for s in pres["muc"]["status_codes"]]:
        form = c.plugin["xep_0004"].make_form(ftype="submit")
        await c.plugin["xep_0045"].set_room_config(room, form)


async def chat(owner, owner_nick, guest, guest_nick, room, what):
    await create(owner, room, owner_nick)
    await guest.plugin["xep_0045"].join_muc_wait(slixmpp.JID(room), guest_nick, maxstanzas=0, timeout=WAIT)
    owner.send_message(mto=room, mbody=f"hello from {owner_nick}", mtype="groupchat")
    await hear(guest, room, owner_nick, f"hello from {owner_nick}")
    guest.send_message(mto=room, mbody=f"hello from {guest_nick}", mtype="groupchat")
    await hear(owner, room, guest_nick, f"hello from {guest_nick}")
    print(f"ok   {LABEL}: {what}", flush=True)
    guest.plugin["xep_0045"].leave_muc(slixmpp.JID(room), guest_nick)


async def main():
    logging.basicConfig(level=logging.WARNING)
    alice = Client(ALICE, "pw-a", A_PORT)
    bob = Client(BOB, "pw-b", PEER_PORT)
    failed = 0
    try:
        alice.connect("127.0.0.1", A_PORT)
        bob.connect("127.0.0.1", PEER_PORT)
        await wait_for("both logins", asyncio.gather(alice.online, bob.online))
        pid = os.getpid()
        for owner, on, guest, gn, room, what in [
            (alice, "Alice", bob, "Bob", f"ours{pid}@groups.a.example", f"{BOB} joins a pushbox room and chats"),
            (bob, "Bob", alice, "Alice", f"theirs{pid}@{PEER_MUC}", f"{ALICE} joins a room on {PEER_MUC} and chats"),
        ]:
            try:
                await chat(owner, on, guest, gn, room, what)
            except Exception as e:  # pylint: disable=broad-exception-caught
                failed += 1
                print(f"FAIL {LABEL}: {what}: {type(e).__name__}: {e}", flush=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
        failed += 1
        print(f"FAIL {LABEL}: set-up: {type(e).__name__}: {e}", flush=True)
    finally:
        alice.disconnect()
        bob.disconnect()
        await asyncio.sleep(0.5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
