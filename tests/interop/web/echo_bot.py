"""bob on TCP (slixmpp, STARTTLS): answers every chat message with `echo: <body>`.

usage: echo_bot.py HOST PORT CA_FILE JID PASSWORD   (runs until killed)
Prints `ready` once online."""
import asyncio
import sys

import slixmpp

host, port, ca, jid, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


class Echo(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(jid, password)
        self.ca_certs = ca
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)

    async def start(self, _):
        self.send_presence()
        await self.get_roster()
        print("ready", flush=True)

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"] and not msg["body"].startswith("echo: "):
            msg.reply(f"echo: {msg['body']}").send()


async def main():
    bot = Echo()
    bot.connect(host, port)
    await asyncio.Event().wait()


asyncio.run(main())
