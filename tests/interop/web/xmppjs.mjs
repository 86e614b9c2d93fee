// xmpp.js 0.14 against pushbox over WebSocket: SASL2 + Bind 2 with a
// password, asking for a FAST token; then a second login with only the
// token (a wrong password beside it, so that a fallback to SCRAM would
// fail); each session chats with bob, a slixmpp client on TCP that echoes.
//
// usage: node xmppjs.mjs WSS_URL   (NODE_EXTRA_CA_CERTS trusts the test CA)
// Prints `ok ...` / `FAIL ...` lines.
import { client, xml } from "@xmpp/client";

globalThis.WebSocket ??= (await import("ws")).default;
// Node before 19 has Web Crypto only under node:crypto (HT-SHA-256-NONE uses it).
globalThis.crypto ??= (await import("node:crypto")).webcrypto;

const [service] = process.argv.slice(2);
let failed = 0;
function check(name, cond, detail = "") {
  if (cond) console.log(`ok   xmpp.js: ${name}`);
  else {
    failed += 1;
    console.log(`FAIL xmpp.js: ${name} ${detail}`);
  }
}

const userAgent = xml(
  "user-agent",
  { id: "8d2c4f52-3b1e-4c7a-9f0e-6a5b4c3d2e1f" },
  xml("software", {}, "xmpp.js 0.14"),
  xml("device", {}, "interop"),
);
let saved = null;

async function session(password, label) {
  const xmpp = client({ service, domain: "localhost", username: "alice", password, resource: "xmppjs", userAgent });
  xmpp.reconnect.stop();
  xmpp.fast.saveToken = async (t) => {
    saved = t;
  };
  xmpp.fast.fetchToken = async () => saved;
  const out = [];
  const inp = [];
  xmpp.on("send", (el) => out.push(el.toString()));
  xmpp.on("element", (el) => inp.push(el.toString()));
  xmpp.on("error", (e) => console.log(`# ${label} error: ${e}`));
  const echoed = new Promise((resolve) => {
    xmpp.on("stanza", (st) => {
      if (st.is("message") && (st.getChildText("body") || "").startsWith("echo: ")) resolve(st.getChildText("body"));
    });
  });
  const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms));
  let jid;
  try {
    jid = await Promise.race([xmpp.start(), timeout(15000, "online")]);
  } catch (e) {
    check(`${label}: online`, false, String(e));
    console.log(`# sent: ${out.join("\n# sent: ")}`);
    console.log(`# got: ${inp.join("\n# got: ")}`);
    return { out: out.join("\n"), inp: inp.join("\n") };
  }
  check(`${label}: online as ${jid}`, String(jid).startsWith("alice@localhost/xmppjs/"));
  await xmpp.send(xml("presence"));
  const text = `hello from xmpp.js (${label})`;
  await xmpp.send(xml("message", { to: "bob@localhost", type: "chat" }, xml("body", {}, text)));
  try {
    const back = await Promise.race([echoed, timeout(15000, "echo")]);
    check(`${label}: chat with a TCP client (slixmpp) over WebSocket`, back === `echo: ${text}`, back);
  } catch (e) {
    check(`${label}: chat with a TCP client (slixmpp) over WebSocket`, false, String(e));
  }
  await xmpp.stop();
  return { out: out.join("\n"), inp: inp.join("\n") };
}

// 1. Password, SASL2 + Bind 2, a token requested.
const first = await session("pw-a", "password login");
check("SASL2 <authenticate/> used", /<authenticate xmlns=["']urn:xmpp:sasl:2["']/.test(first.out));
check("Bind 2 inline", /<bind xmlns=["']urn:xmpp:bind:0["']/.test(first.out));
check("stream management enabled inline", /<enabled xmlns=["']urn:xmpp:sm:3["'][^>]*resume=["']true["']/.test(first.inp));
check("FAST token requested and received", /<request-token/.test(first.out) && saved && saved.token, JSON.stringify(saved));

// 2. Only the token: the password given is wrong.
const second = await session("wrong-password", "token login");
check(
  "logged in with HT-SHA-256-NONE, no SCRAM",
  /mechanism=["']HT-SHA-256-NONE["']/.test(second.out) && !/SCRAM/.test(second.out),
);

console.log(`xmpp.js: ${failed} failed`);
process.exit(failed ? 1 : 0);
