#!/usr/bin/env python3
"""Share of a pushbox CPU profile by area (issue 14).

    perf script -F comm,tid,ip,sym --no-inline -i perf.data | python3 bench/perf_areas.py

Each sample goes to the first area, in the order below, that one of its
frames (or its thread's name) matches: a sample of malloc called by the
serialiser counts as writing, one of SQLite on the archive's thread as the
archive writer. `bench/routing.sh` with PERF=1 records such a profile.
"""
import re
import sys
from collections import Counter

AREAS = [
    ("logins (TLS handshakes, SCRAM, bind) of the benchmark's sessions",
     r"handshake|x25519|scram|pbkdf2|argon2|sasl|Negotiat|::bind|after_tls|ring_core_0_17_14__(p256|p384|bn_|ecp_|x25519|fiat_curve|sha256_block|sha512_block)|_rsa|Rsa"),
    ("archive writer thread (SQLite inserts, commits)", r"^comm:archive-writer"),
    ("archive hooks on the routing path (serialise for the archive, stanza-id, queue)",
     r"modules::mam|archive|Archive"),
    ("XML write (serialiser, stream queue)",
     r"xml_write|minidom::element::Element::write_to|rxml::writer|ItemWriter|XmlStream<S>::queue|to_xml"),
    ("XML parse (rxml, tree builder, our limits)",
     r"StreamParser|rxml::parser|rxml::lexer|tree_builder|RawParser"),
    ("kernel: send (incl. loopback delivery to the receiver)",
     r"sendto|sendmsg|writev|tcp_sendmsg|__send\b|do_writev|ksys_write"),
    ("kernel: receive", r"recvfrom|recvmsg|tcp_recvmsg|ksys_read|__recv\b|readv"),
    ("TLS record crypto (rustls, AES-GCM / ChaCha)",
     r"rustls|aes_gcm|aes_hw|gcm_|chacha|poly1305|ring_core"),
    ("routing and module hooks (router, carbons, push, blocking, presence)",
     r"xmpp::router|xmpp::modules|xmpp::sessions|Router|xmpp::presence|hooks"),
    ("session loop, c2s handling", r"xmpp::c2s|Session|session"),
    ("epoll, futex, scheduler, wake-ups",
     r"epoll|futex|schedule|park|unpark|wake|Notify|mpsc|tokio::runtime|tokio::sync"),
    ("allocator", r"malloc|free|realloc|cfree|_int_"),
]

COMPILED = [(name, re.compile(rx)) for name, rx in AREAS]


def samples(stream):
    comm, frames = None, []
    for line in stream:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if not line[0].isspace():
            comm = line.split()[0]
            continue
        parts = line.split(None, 1)
        frames.append(parts[1].strip() if len(parts) > 1 else "")
    if comm is not None:
        yield comm, frames


def main():
    counts = Counter()
    total = 0
    for comm, frames in samples(sys.stdin):
        total += 1
        hay = ["comm:" + comm] + frames
        for name, rx in COMPILED:
            if any(rx.search(f) for f in hay):
                counts[name] += 1
                break
        else:
            counts["rest"] += 1
    print(f"{total} samples")
    for name, _ in AREAS + [("rest", "")]:
        n = counts[name]
        print(f"{100.0 * n / max(total, 1):5.1f} %  {n:6d}  {name}")


if __name__ == "__main__":
    main()
