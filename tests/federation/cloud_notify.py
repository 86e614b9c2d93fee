"""The seed's "XMPP servers send to the relay", across federation: a Prosody
user (b.example, mod_cloud_notify) registers a Web Push subscription with
pushbox's app server push.a.example over s2s, enables XEP-0357 push on
Prosody, goes offline, and gets a message. Prosody publishes to
push.a.example over s2s; pushbox's relay delivers one Web Push request to
the push-service stand-in below, which decrypts it with the subscription's
private key (RFC 8291 / RFC 8188) like a browser would.

usage: cloud_notify.py A_C2S B_C2S CERT KEY
Prints `ok ...` / `FAIL ...` lines.
"""
import asyncio
import base64
import http.server
import json
import os
import ssl
import sys
import threading
import time
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

A_C2S, B_C2S, CERT, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
WAIT = 30
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
        print(f"ok   cloud_notify: {name}")
    else:
        failed += 1
        print(f"FAIL cloud_notify: {name} {detail}")


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# --- The subscription a browser would hold.
ua_private = ec.generate_private_key(ec.SECP256R1())
ua_public = ua_private.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
auth_secret = os.urandom(16)


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def decrypt(body):
    """RFC 8188 aes128gcm with the RFC 8291 key schedule; one record."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public = body[21:21 + idlen]
    ciphertext = body[21 + idlen:]
    assert len(ciphertext) <= rs, "one record"
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    ecdh = ua_private.exchange(ec.ECDH(), peer)
    ikm = hkdf(auth_secret, ecdh, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    plain = AESGCM(cek).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
    assert plain.endswith(b"\x02"), "last-record delimiter"
    return plain[:-1]


# --- The push service stand-in: RFC 8030 says 201 Created.
received = []


class PushService(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        received.append((self.path, dict(self.headers), body))
        self.send_response(201)
        self.send_header("Location", self.path + "/msg1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PushService)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
endpoint = f"https://127.0.0.1:{httpd.server_address[1]}/push/bob1-sub"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # Self-signed certificates on both servers; this test is about s2s and push.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.online.done() or self.online.set_result(True))
        self.register_plugin("xep_0030")

    async def login(self, port):
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.online, WAIT)
        self.send_presence()
        return self


async def main():
    bob = await Client("bob1@b.example/phone", "pw-b").login(B_C2S)
    # 1. Register the subscription with push.a.example (Conversations' p2 style command).
    fields = {"endpoint": endpoint, "p256dh": b64u(ua_public), "auth": b64u(auth_secret), "device-id": "bob1-phone"}
    xs = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    iq = bob.make_iq_set(ito="push.a.example")
    iq.append(ET.fromstring(
        "<command xmlns='http://jabber.org/protocol/commands' node='register-push-webpush' action='execute'>"
        f"<x xmlns='jabber:x:data' type='submit'>{xs}</x></command>"))
    res = await iq.send(timeout=WAIT)
    got = {f.get("var"): f.findtext("{jabber:x:data}value")
           for f in res.xml.iter("{jabber:x:data}field")}
    check("registered at push.a.example over s2s", got.get("jid") == "push.a.example" and got.get("node") and got.get("secret"),
          str(got))
    # 2. Enable push on Prosody (mod_cloud_notify), with the secret as publish-options.
    iq = bob.make_iq_set()
    iq.append(ET.fromstring(
        f"<enable xmlns='urn:xmpp:push:0' jid='push.a.example' node='{got['node']}'>"
        "<x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
        f"<field var='secret'><value>{got['secret']}</value></field></x></enable>"))
    check("push enabled on Prosody", await answered(iq))
    # 3. Offline, then a message from a.example.
    # Until Prosody has closed bob's stream (his session is gone), not a fixed pause.
    await bob.disconnect(wait=WAIT)
    alice = await Client("alice1@a.example/pc", "pw-a").login(A_C2S)
    alice.send_message(mto="bob1@b.example", mbody="wake up, bob", mtype="chat")
    deadline = time.time() + WAIT
    while not received and time.time() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a second push would show up by now
    check("exactly one Web Push request reached the push service", len(received) == 1, f"{len(received)} requests")
    if received:
        path, headers, body = received[0]
        h = {k.lower(): v for k, v in headers.items()}
        check("request to the subscription's endpoint", path == "/push/bob1-sub", path)
        check("aes128gcm with VAPID and a TTL", h.get("content-encoding") == "aes128gcm"
              and h.get("authorization", "").startswith("vapid t=") and int(h.get("ttl", "0")) > 0, str(h))
        try:
            payload = decrypt(body)
            msg = json.loads(payload)
            check("payload decrypts with the subscription key (RFC 8291)", "priority" in msg, repr(msg))
        except Exception as e:  # noqa: BLE001
            check("payload decrypts with the subscription key (RFC 8291)", False, repr(e))
    alice.disconnect()


asyncio.run(main())
httpd.shutdown()
sys.exit(1 if failed else 0)
