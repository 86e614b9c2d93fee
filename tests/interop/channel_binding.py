"""SCRAM-SHA-256-PLUS with `tls-server-end-point` (RFC 5929) from an
independent SCRAM implementation: scramp, which computes the binding itself
from the certificate Python's ssl module received (asn1crypto reads the
signature algorithm). On TLS 1.2 and TLS 1.3, over STARTTLS; the XEP-0474
`h` attribute is checked against the stream features as a client sees them.

Usage: channel_binding.py HOST PORT CA USER PASSWORD
Prints 'ok …' or 'FAIL …' per check and a closing 'N passed, N failed' line.
"""

import base64
import hashlib
import re
import socket
import ssl
import sys

import scramp

HOST, PORT, CA, USER, PW = sys.argv[1:6]
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = ""

    def send(self, s):
        self.sock.sendall(s.encode())

    def until(self, marker):
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError(f"connection closed before {marker!r}: {self.buf!r}")
            self.buf += data.decode()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out


def text_of(xml, name):
    m = re.search(rf"<{name}[^>]*>([^<]*)</{name}>", xml)
    if not m:
        raise RuntimeError(f"no <{name}> in {xml!r}")
    return base64.b64decode(m.group(1)).decode()


def login(version):
    raw = socket.create_connection((HOST, int(PORT)), timeout=20)
    c = Conn(raw)
    c.send(HEADER)
    c.until("</stream:features>")
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    c.until("<proceed")
    c.until(">")
    ctx = ssl.create_default_context(cafile=CA)
    ctx.minimum_version = version
    ctx.maximum_version = version
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    c = Conn(tls)
    c.send(HEADER)
    features = c.until("</stream:features>")
    # XEP-0474 hashes the RFC 6120 <mechanisms/> list only (SASL2's
    # <authentication/> and FAST's lists sit beside it in the features).
    sasl1 = re.search(r"<mechanisms xmlns=['\"]" + re.escape(SASL) + r"['\"]>(.*?)</mechanisms>", features, re.S)
    if not sasl1:
        raise RuntimeError(f"no RFC 6120 mechanisms in the features: {features}")
    mechs = re.findall(r"<mechanism>([^<]+)</mechanism>", sasl1.group(1))
    types = re.findall(r"<channel-binding type=['\"]([^'\"]+)['\"]", features)
    if "SCRAM-SHA-256-PLUS" not in mechs or "tls-server-end-point" not in types:
        raise RuntimeError(f"SCRAM-SHA-256-PLUS with tls-server-end-point not offered: {features}")
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], USER, PW, channel_binding=("tls-server-end-point", tls)
    )
    first = client.get_client_first()
    if not first.startswith("p=tls-server-end-point,"):
        raise RuntimeError(f"scramp did not bind: {first}")
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256-PLUS'>{base64.b64encode(first.encode()).decode()}</auth>")
    server_first = text_of(c.until("</challenge>"), "challenge")
    client.set_server_first(server_first)
    # XEP-0474 as a client checks it: sorted lists, U+001E and U+001F, the SCRAM hash.
    seen = "\x1e".join(sorted(mechs)) + "\x1f" + "\x1e".join(sorted(types))
    want = base64.b64encode(hashlib.sha256(seen.encode()).digest()).decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    if attrs.get("h") != want:
        raise RuntimeError(f"XEP-0474 h={attrs.get('h')!r}, computed {want!r} from {seen!r}")
    final = client.get_client_final()
    c.send(f"<response xmlns='{SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
    answer = c.until(">")
    if "<success" not in answer:
        raise RuntimeError(f"refused: {answer}{c.until('</failure>')}")
    client.set_server_final(text_of(answer + c.until("</success>"), "success"))
    c.send(HEADER)
    c.until("</stream:features>")
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    bound = c.until("</iq>")
    if f"<jid>{USER}@localhost/" not in bound:
        raise RuntimeError(f"bind: {bound}")
    negotiated = tls.version()
    c.send("</stream:stream>")
    tls.close()
    return negotiated


passed = failed = 0
for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    name = f"scramp SCRAM-SHA-256-PLUS tls-server-end-point over {version.name}"
    try:
        got = login(version)
        print(f"ok   {name} (negotiated {got}, server signature verified, XEP-0474 hash matches)")
        passed += 1
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        print(f"FAIL {name}: {e}")
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
