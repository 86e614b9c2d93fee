"""The invitation page in a real browser: headless Chromium driven over the
DevTools protocol (tests/common/cdp.py: on a pipe, standard library only),
with a phone-sized viewport. Fills the form, checks the account with slixmpp,
and keeps screenshots.

usage: browser.py URL C2S_PORT CA_FILE SPKI_HASH ARTIFACT_DIR
Prints `ok ...` / `FAIL ...` lines.
"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from cdp import Browser  # noqa: E402  (the shared DevTools client, tests/common/cdp.py)

URL, C2S_PORT, CA, SPKI, ARTIFACTS = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
USERNAME, PASSWORD = "webuser", "correct horse battery"
failed = 0


def check(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok   invite page: {name}")
    else:
        failed += 1
        print(f"FAIL invite page: {name} {detail}")


async def xmpp_login(user, password):
    import slixmpp

    class Probe(slixmpp.ClientXMPP):
        def __init__(self):
            super().__init__(f"{user}@localhost/web", password)
            self.ok = asyncio.get_running_loop().create_future()
            self.add_event_handler("session_start", lambda _: self.ok.done() or self.ok.set_result(True))
            self.add_event_handler("failed_auth", lambda _: self.ok.done() or self.ok.set_result(False))

    c = Probe()
    c.ca_certs = CA
    c.connect("127.0.0.1", C2S_PORT)
    try:
        return await asyncio.wait_for(c.ok, 20)
    except asyncio.TimeoutError:
        return False
    finally:
        c.disconnect()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    b = Browser(SPKI, ARTIFACTS)
    try:
        # A phone: 412 CSS pixels wide.
        b.open_page(412, 915, scale=2, mobile=True, network=True)
        status = b.navigate(URL)
        check("renders (200)", status == 200, f"status {status}")
        shot = b.screenshot("invite-page.png", full_page=True)
        check("screenshot kept", os.path.getsize(shot) > 10_000, shot)
        check("fits a phone screen (no sideways scrolling)",
              b.eval("document.documentElement.scrollWidth <= window.innerWidth") is True,
              b.eval("[document.documentElement.scrollWidth, window.innerWidth]"))
        check("no scripts on the page", b.eval("document.scripts.length") == 0)
        check("QR code drawn", (b.eval("(() => { const s = document.querySelector('.qr svg');"
                                       " return s ? s.getBoundingClientRect().width : 0 })()") or 0) >= 200)
        link = b.eval("document.querySelector('a.button').getAttribute('href')")
        check("xmpp: link offered", isinstance(link, str) and link.startswith("xmpp:localhost?register;preauth="),
              repr(link))
        # Fill the form the way a person would: focus each field and type.
        for field, value in [("username", USERNAME), ("password", PASSWORD), ("confirm", PASSWORD)]:
            b.eval(f"document.getElementById('{field}').focus()")
            b.call("Input.insertText", {"text": value})
        b.events.clear()
        b.eval("document.querySelector('button[type=submit]').click()")
        status = b.wait_for_load()
        text = b.eval("document.body.innerText") or ""
        b.screenshot("invite-created.png", full_page=True)
        check("form creates the account (200)", status == 200 and "Your account is ready" in text,
              f"status {status}: {text[:300]!r}")
        check("page names the new address", f"{USERNAME}@localhost" in text)
        ok = asyncio.run(xmpp_login(USERNAME, PASSWORD))
        check("the new account logs in over XMPP (slixmpp, SCRAM)", ok)
        status = b.navigate(URL)
        text = b.eval("document.body.innerText") or ""
        b.screenshot("invite-used.png", full_page=True)
        check("a used single-use invitation is refused (404)",
              status == 404 and "not valid" in text, f"status {status}: {text[:200]!r}")
    except Exception as e:  # a broken browser run is a failure, not a crash
        check("browser session", False, repr(e))
    finally:
        b.close()
    print(f"screenshots in {ARTIFACTS}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
