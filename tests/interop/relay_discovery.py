"""docs/spec/push-relay-discovery.md played by two slixmpp clients against
the real pushbox binary.

Usage: relay_discovery.py HOST C2S_PORT XMPP_CA STANDIN_CERT STANDIN_KEY

Ivan's client registers a Web Push subscription with the relay's XMPP face
(push.localhost, ad-hoc command register-push-webpush) and advertises
urn:pushbox:push-relay:0. Judy, a contact, asks Ivan's client for a relay
endpoint and token; Ivan's client gets a per-contact token with the ad-hoc
command issue-contact-token and answers. Judy POSTs a push to the relay with
it, and the Web Push stand-in (an HTTPS server in this script) receives
exactly one push. A stranger is refused, and a made-up token gets a 404.
Prints one line per check and a closing 'N passed, N failed' line.
"""

import asyncio
import base64
import json
import logging
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher import MatchXPath
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HOST, PORT, CA, STANDIN_CERT, STANDIN_KEY = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
DOMAIN = "localhost"
NS = "urn:pushbox:push-relay:0"
NS_CMD = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
WAIT = 20


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# ------------------------------------------------------------ Web Push stand-in

class StandIn(BaseHTTPRequestHandler):
    pushes = []
    lock = threading.Lock()

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        with StandIn.lock:
            StandIn.pushes.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


def start_standin():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(STANDIN_CERT, STANDIN_KEY)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, httpd.server_address[1]


# ------------------------------------------------------------------ clients

class Client(slixmpp.ClientXMPP):
    def __init__(self, user, password):
        super().__init__(f"{user}@{DOMAIN}/phone", password)
        self.ca_certs = CA
        self.online = asyncio.get_event_loop().create_future()
        self.register_plugin("xep_0030")
        self.add_event_handler("session_start", self._start)
        self.subs = asyncio.Queue()
        self.add_event_handler("presence_subscribed", lambda p: self.subs.put_nowait(p))

    async def _start(self, _):
        if not self.online.done():
            self.online.set_result(True)

    async def login(self):
        self.connect(HOST, PORT)
        await asyncio.wait_for(self.online, WAIT)
        await self.get_roster()
        self.send_presence()
        return self

    async def command(self, node, fields):
        """Run an ad-hoc command of push.localhost in one step; the result fields."""
        iq = self.make_iq_set(ito=f"push.{DOMAIN}")
        cmd = ET.Element(f"{{{NS_CMD}}}command", node=node, action="execute")
        x = ET.SubElement(cmd, f"{{{NS_DATA}}}x", type="submit")
        for k, v in fields.items():
            f = ET.SubElement(x, f"{{{NS_DATA}}}field", var=k)
            ET.SubElement(f, f"{{{NS_DATA}}}value").text = v
        iq.append(cmd)
        r = await iq.send(timeout=WAIT)
        c = r.xml.find(f"{{{NS_CMD}}}command")
        assert c is not None and c.get("status") == "completed", r
        out = {}
        for f in c.iter(f"{{{NS_DATA}}}field"):
            v = f.find(f"{{{NS_DATA}}}value")
            out[f.get("var")] = v.text if v is not None else ""
        return out


class Owner(Client):
    """Ivan's client: answers relay requests from contacts."""

    def __init__(self, user, password):
        super().__init__(user, password)
        self.plugin["xep_0030"].add_feature(NS)
        self.register_handler(CoroutineCallback(
            "relay request", MatchXPath(f"{{jabber:client}}iq/{{{NS}}}query"), self._relay_request))

    async def _relay_request(self, iq):
        if iq["type"] != "get":
            return
        asker = iq["from"].bare
        item = self.client_roster[asker] if asker in self.client_roster else None
        if item is None or item["subscription"] not in ("from", "both"):
            err = iq.reply(clear=True)
            err["type"] = "error"
            err["error"]["type"] = "cancel"
            err["error"]["condition"] = "forbidden"
            err.send()
            return
        t = await self.command("issue-contact-token", {"contact": asker})
        reply = iq.reply()
        q = ET.Element(f"{{{NS}}}query")
        ET.SubElement(q, f"{{{NS}}}relay", endpoint=t["endpoint"], token=t["token"], expires=t["expires"])
        reply.append(q)
        reply.send()


async def ask(client, to):
    iq = client.make_iq_get(ito=to)
    iq.append(ET.Element(f"{{{NS}}}query"))
    return await iq.send(timeout=WAIT)


def post(endpoint, token):
    req = urllib.request.Request(endpoint, data=json.dumps({"token": token, "priority": "high"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    ctx = ssl.create_default_context(cafile=CA)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=WAIT) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def main():
    results = []

    def check(name, ok, detail=""):
        ok = bool(ok)
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} relay-discovery: {name}{'' if ok else ': ' + str(detail)}")

    httpd, port = start_standin()
    ivan = await Owner("ivan", "pw-i").login()
    judy = await Client("judy", "pw-j").login()
    kim = await Client("kim", "pw-k").login()

    # Judy and Ivan become contacts (Ivan approves Judy's request).
    ivan.roster.auto_authorize = True
    judy.send_presence(pto=f"ivan@{DOMAIN}", ptype="subscribe")
    await asyncio.wait_for(judy.subs.get(), WAIT)
    await ivan.get_roster()

    # Ivan's device: a Web Push subscription at the stand-in.
    key = ec.generate_private_key(ec.SECP256R1())
    p256dh = b64url(key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))
    reg = await ivan.command("register-push-webpush", {
        "endpoint": f"https://localhost:{port}/wp/ivan-phone",
        "p256dh": p256dh, "auth": b64url(os.urandom(16)), "device-id": "ivan-phone"})
    check("device registered with the relay's XMPP face", reg.get("jid") == f"push.{DOMAIN}" and bool(reg.get("node")), reg)

    info = await judy.plugin["xep_0030"].get_info(jid=ivan.boundjid.full, timeout=WAIT)
    check("the owner's client advertises the feature", NS in info["disco_info"]["features"])

    r = await ask(judy, ivan.boundjid.full)
    relay = r.xml.find(f"{{{NS}}}query/{{{NS}}}relay")
    check("a contact gets an endpoint and a token", relay is not None and relay.get("token"), r)
    endpoint, token = relay.get("endpoint"), relay.get("token")
    check("the endpoint is the relay's messages URL", endpoint.endswith("/api/v1/messages/"), endpoint)

    status = post(endpoint, token)
    check("the relay accepts the contact's push", status == 202, status)
    for _ in range(WAIT * 10):
        if StandIn.pushes:
            break
        await asyncio.sleep(0.1)
    # A round trip through the daemon, then count: exactly one push arrived.
    await judy.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=WAIT)
    with StandIn.lock:
        got = list(StandIn.pushes)
    check("the Web Push stand-in received exactly one push", len(got) == 1, len(got))
    if got:
        path, headers, body = got[0]
        ok = path == "/wp/ivan-phone" and headers.get("content-encoding") == "aes128gcm" and len(body) > 86
        check("the push is an encrypted Web Push message", ok, (path, headers.get("content-encoding"), len(body)))

    check("a made-up token is refused with 404", post(endpoint, "0" * 40) == 404)

    try:
        await ask(kim, ivan.boundjid.full)
        check("a stranger is refused", False, "answered")
    except IqError as e:
        check("a stranger is refused", e.condition == "forbidden", e.condition)

    for c in (ivan, judy, kim):
        c.disconnect()
    httpd.shutdown()
    return sum(results), len(results) - sum(results)


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    try:
        p, f = asyncio.run(asyncio.wait_for(main(), 120))
    except Exception as e:  # report, never hang
        print(f"FAIL relay-discovery: {type(e).__name__}: {e}")
        p, f = 0, 1
    print(f"relay-discovery: {p} passed, {f} failed")
    sys.exit(1 if f else 0)
