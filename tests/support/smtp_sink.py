#!/usr/bin/python3
"""A real SMTP server for Switchboard's tests (aiosmtpd, loopback only).

Each accepted message is saved in --dir as NNNNNN.eml (the exact bytes
received in DATA, after dot-unstuffing) and NNNNNN.json (the envelope:
mail_from, rcpt_to, peer). The .json is written last, atomically, so its
presence means the message is complete. Numbering continues across restarts
in the same directory.

Behaviour:
  RCPT TO an address whose local part starts with "reject"   -> 550 5.1.1 no such user
  RCPT TO an address whose local part starts with "tempfail" -> 451 4.3.0 try later
  --auth USER:PASSWORD   require AUTH PLAIN/LOGIN with these credentials
  --starttls             offer and require STARTTLS (--cert/--key)
  --implicit-tls         TLS from the first byte, SMTPS (--cert/--key)

When listening, writes "ready" into --dir/ready.
"""
import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        self.seq = sum(1 for n in os.listdir(self.dir) if n.endswith(".json"))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 no such user"
        if local.startswith("tempfail"):
            return "451 4.3.0 try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.seq += 1
        base = os.path.join(self.dir, "%06d" % self.seq)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "peer": "%s:%s" % tuple(session.peer[:2]) if session.peer else "",
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.replace(base + ".json.tmp", base + ".json")
        # Tests can hold the final answer back (after the message is stored),
        # to catch a client in the window between delivery and its record.
        delay_file = os.path.join(self.dir, "data_delay_ms")
        if os.path.exists(delay_file):
            with open(delay_file) as f:
                await asyncio.sleep(int(f.read().strip() or "0") / 1000.0)
        return "250 2.0.0 Ok: queued as %06d" % self.seq


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--auth")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()

    messages = os.path.join(a.dir, "messages")
    handler = Sink(messages)

    ctx = None
    if a.starttls or a.implicit_tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)

    authenticator = None
    if a.auth:
        user, password = a.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == user.encode()
                and auth_data.password == password.encode()
            )
            return AuthResult(success=ok, handled=False)

    def factory():
        return SMTP(
            handler,
            hostname="sink.test",
            decode_data=False,
            tls_context=ctx if a.starttls else None,
            require_starttls=a.starttls,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            # With implicit TLS aiosmtpd does not know the connection is
            # encrypted; only the STARTTLS mode can insist on it.
            auth_require_tls=a.starttls,
            timeout=60,
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory,
            host="127.0.0.1",
            port=a.port,
            ssl=ctx if a.implicit_tls else None,
            reuse_address=True,
        )
        with open(os.path.join(a.dir, "ready.tmp"), "w") as f:
            f.write("ready\n")
        os.replace(os.path.join(a.dir, "ready.tmp"), os.path.join(a.dir, "ready"))
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
