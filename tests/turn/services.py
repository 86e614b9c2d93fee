"""Fetch TURN credentials over XMPP (XEP-0215) as a client would.

Usage: services.py HOST PORT CA USER PASSWORD

Logs in with slixmpp, asks the server for its external services
(`urn:xmpp:extdisco:2`), and prints one line per service:
`type transport host port username password` (`-` where absent).
"""

import asyncio
import sys
import xml.etree.ElementTree as ET

import slixmpp

HOST, PORT, CA, USER, PW = sys.argv[1:6]
NS = "urn:xmpp:extdisco:2"


class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(f"{USER}@localhost", PW)
        self.ca_certs = CA
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))


async def main():
    c = Client()
    c.connect(HOST, int(PORT))
    await asyncio.wait_for(c.online, 20)
    iq = c.Iq()
    iq["type"] = "get"
    iq["to"] = "localhost"
    iq.append(ET.Element(f"{{{NS}}}services"))
    r = await iq.send(timeout=20)
    for s in r.xml.find(f"{{{NS}}}services"):
        a = [s.get(k) or "-" for k in ("type", "transport", "host", "port", "username", "password")]
        print(" ".join(a))
    c.disconnect()


asyncio.run(main())
