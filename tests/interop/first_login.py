"""One slixmpp login that must succeed on its first connection (issue 18).

Usage: first_login.py HOST PORT CA USER PASSWORD EXPECTED_SLIXMPP_VERSION

Run with Debian's python3 (its python3-slixmpp 1.8.3, the one poezio uses,
which tries SCRAM-*-PLUS with `tls-unique` on TLS 1.3 and then SCRAM with
the `y` flag) and with a python that has slixmpp 1.17 from PyPI. Prints
'ok …' or 'FAIL …' and a closing 'N passed, N failed' line.
"""

import asyncio
import sys

import slixmpp

HOST, PORT, CA, USER, PW, VERSION = sys.argv[1:7]
WAIT = 20


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{USER}@localhost", PW)
        self.ca_certs = CA
        self.connections = 0
        self.disconnections = 0
        self.refusals = []
        self.online = asyncio.get_event_loop().create_future()
        self.register_plugin("xep_0199")
        self.add_event_handler("connected", self._connected)
        self.add_event_handler("disconnected", self._disconnected)
        self.add_event_handler("failed_auth", lambda f: self.refusals.append(f["condition"]))
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))

    def _connected(self, _):
        self.connections += 1

    def _disconnected(self, _):
        self.disconnections += 1


async def main():
    if slixmpp.__version__ != VERSION:
        print(f"FAIL slixmpp {VERSION}: this python has slixmpp {slixmpp.__version__}")
        return False
    c = Client()
    if tuple(int(x) for x in VERSION.split(".")[:2]) < (1, 9):
        c.connect(address=(HOST, int(PORT)))
    else:
        c.connect(HOST, int(PORT))
    try:
        await asyncio.wait_for(c.online, WAIT)
    except asyncio.TimeoutError:
        print(f"FAIL slixmpp {VERSION}: no session in {WAIT}s "
              f"(connections {c.connections}, refusals {c.refusals})")
        return False
    mech = c.plugin["feature_mechanisms"].mech.name
    ok = c.connections == 1 and c.disconnections == 0
    try:
        await c.plugin["xep_0199"].ping(jid="localhost", timeout=WAIT)
    except Exception as e:  # noqa: BLE001 — any error fails the scenario
        print(f"FAIL slixmpp {VERSION}: ping after login: {e!r}")
        return False
    c.disconnect()
    what = (f"slixmpp {VERSION}: logged in on connection {c.connections} with {mech} "
            f"after {len(c.refusals)} refused mechanism(s) {c.refusals}")
    print(("ok   " if ok else "FAIL ") + what)
    return ok


ok = asyncio.get_event_loop().run_until_complete(main())
print(f"first-login: {int(ok)} passed, {int(not ok)} failed")
sys.exit(0 if ok else 1)
