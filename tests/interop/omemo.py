"""OMEMO interop: two slixmpp clients with slixmpp-omemo (an independent
implementation of XEP-0384 on top of PEP) exchange encrypted messages
through the real pushbox binary, and each decrypts the other's.

Usage: omemo.py HOST STARTTLS_PORT CA_PEM USER1 PW1 USER2 PW2

What it exercises on the server: PEP publish with publish-options
(access_model=open, persist_items, max_items=max/1) for both the legacy
(eu.siacs.conversations.axolotl.*) and the omemo:2 device lists and bundles,
item retrieval by id and by max_items, and device-list notifications
through entity caps (+notify) and last-item-on-presence once the two
accounts are subscribed to each other. The messages are encrypted with
legacy OMEMO (slixmpp-omemo 2.x encrypts bodies with oldmemo only; its
omemo:2 needs SCE, which it does not implement yet).

Prints one line per check ("ok ..." / "FAIL ...") and exits non-zero on failure.
"""

import asyncio
import logging
import os
import sys

# This file is called omemo.py: keep its own directory off the import path so
# that `import omemo` finds the library, not this script.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
from typing import Any, FrozenSet

import slixmpp
from omemo.types import DeviceInformation

# The library is imported now; the shared test set-up lives beside this file.
sys.path.append(_here)
import omemo_impl  # noqa: E402

HOST, PORT, CA = sys.argv[1], int(sys.argv[2]), sys.argv[3]
USERS = [(sys.argv[4], sys.argv[5]), (sys.argv[6], sys.argv[7])]
DOMAIN = "localhost"
WAIT = 60


class Client(slixmpp.ClientXMPP):
    def __init__(self, user: str, password: str) -> None:
        super().__init__(f"{user}@{DOMAIN}", password)
        self.ca_certs = CA
        self.enable_direct_tls = False
        self.use_message_ids = True
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.subscribed: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_event_loop()
        self.online = loop.create_future()
        self.omemo_ready = loop.create_future()
        for p in ["xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0199", "xep_0280", "xep_0334"]:
            self.register_plugin(p)
        self.register_plugin("xep_0384", module=omemo_impl)
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("omemo_initialized", lambda *_: self.omemo_ready.done() or self.omemo_ready.set_result(True))
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("presence_subscribed", lambda p: self.subscribed.put_nowait(p))
        self.roster.auto_authorize = True
        self.roster.auto_subscribe = False

    async def _start(self, _: Any) -> None:
        await self.get_roster()
        # slixmpp registers the plugins' +notify features and computes its
        # caps before resource binding, under the JID without a resource:
        # register them again for the bound JID and recompute the caps, so
        # that the presence carries <c/> with the +notify features PEP needs.
        self.plugin["xep_0163"].add_interest(
            ["eu.siacs.conversations.axolotl.devicelist", "urn:xmpp:omemo:2:devices"]
        )
        await self.plugin["xep_0115"].update_caps(broadcast=False)
        self.send_presence()
        if not self.online.done():
            self.online.set_result(True)


async def wait_for(what: str, fut_or_coro) -> Any:
    try:
        return await asyncio.wait_for(fut_or_coro, WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def devices_of(c: Client, bare: str) -> FrozenSet[DeviceInformation]:
    sm = await c.plugin["xep_0384"].get_session_manager()
    return await sm.get_device_information(bare)


async def until_devices_known(c: Client, bare: str) -> None:
    """Wait until c learnt bare's device list (through PEP notifications)."""
    async def loop() -> None:
        while not await devices_of(c, bare):
            await asyncio.sleep(0.2)

    await wait_for(f"{c.boundjid.bare} to learn the device list of {bare}", loop())


async def send_encrypted(sender: Client, to: str, text: str) -> None:
    msg = sender.make_message(mto=slixmpp.JID(to), mtype="chat")
    msg["body"] = text
    encrypted, errors = await sender.plugin["xep_0384"].encrypt_message(msg, slixmpp.JID(to))
    if encrypted is None:
        raise AssertionError(f"nothing to send; errors: {errors}")
    if errors:
        logging.info("non-critical encryption errors: %s", errors)
    encrypted.send()


async def receive_decrypted(receiver: Client, sender_bare: str) -> str:
    while True:
        m = await wait_for(f"an encrypted message at {receiver.boundjid.bare}", receiver.inbox.get())
        if m["from"].bare != sender_bare or m["type"] not in ("chat", "normal"):
            continue
        namespaces = receiver.plugin["xep_0384"].is_encrypted(m)
        if not namespaces:
            raise AssertionError(f"a plaintext message arrived: {m}")
        if "This message is OMEMO encrypted." != m["body"]:
            raise AssertionError(f"unexpected fallback body: {m['body']!r}")
        decrypted, device = await receiver.plugin["xep_0384"].decrypt_message(m)
        return decrypted["body"]


async def main() -> int:
    logging.basicConfig(level=getattr(logging, os.environ.get("OMEMO_LOG", "WARNING")))
    (u1, p1), (u2, p2) = USERS
    a, b = Client(u1, p1), Client(u2, p2)
    failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failed
        if ok:
            print(f"ok   omemo: {what}", flush=True)
        else:
            failed += 1
            print(f"FAIL omemo: {what} {detail}", flush=True)

    try:
        for c in (a, b):
            c.connect(HOST, PORT)
        await wait_for("both logins", asyncio.gather(a.online, b.online))
        await wait_for("OMEMO set-up of both clients", asyncio.gather(a.omemo_ready, b.omemo_ready))
        report(True, "both clients published their device lists and bundles")

        # Own device lists read back from PEP (legacy and omemo:2).
        for c in (a, b):
            for node in ["eu.siacs.conversations.axolotl.devicelist", "urn:xmpp:omemo:2:devices"]:
                iq = await c.plugin["xep_0060"].get_items(slixmpp.JID(c.boundjid.bare), node, max_items=1)
                n = len(iq["pubsub"]["items"])
                report(n == 1, f"{c.boundjid.bare} reads its {node}", f"items={n}")

        # Mutual subscription: PEP notifications then carry the device lists.
        a.send_presence(pto=b.boundjid.bare, ptype="subscribe")
        await wait_for("b accepts a", a.subscribed.get())
        b.send_presence(pto=a.boundjid.bare, ptype="subscribe")
        await wait_for("a accepts b", b.subscribed.get())
        await until_devices_known(a, b.boundjid.bare)
        await until_devices_known(b, a.boundjid.bare)
        report(True, "device lists learnt through PEP notifications (+notify caps)")

        await send_encrypted(a, b.boundjid.bare, "hello bob, this is secret")
        got = await receive_decrypted(b, a.boundjid.bare)
        report(got == "hello bob, this is secret", "b decrypts a's message", repr(got))

        await send_encrypted(b, a.boundjid.bare, "hi alice, secret back")
        got = await receive_decrypted(a, b.boundjid.bare)
        report(got == "hi alice, secret back", "a decrypts b's reply", repr(got))

        # A second exchange on the established session.
        await send_encrypted(a, b.boundjid.bare, "second message")
        got = await receive_decrypted(b, a.boundjid.bare)
        report(got == "second message", "b decrypts a's second message", repr(got))
    except Exception as e:  # pylint: disable=broad-exception-caught
        report(False, "scenario", f"{type(e).__name__}: {e}")
    finally:
        for c in (a, b):
            c.disconnect()
        await asyncio.sleep(0.5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
