"""A real SMTP server for the mail tests: aiosmtpd with STARTTLS (or implicit TLS) and AUTH.

Writes every message it accepts to SPOOL/<n>.eml, and the envelope to SPOOL/<n>.json. Binds
127.0.0.1 on a free port and prints `READY <port>` once it accepts connections. Stops on SIGTERM.

    python tests/servers/smtp_server.py --spool DIR [--security starttls|tls|none]
        [--cert CERT --key KEY] [--user USER --password PASSWORD]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        name = f"{self.count:04d}"
        (self.folder / f"{name}.json").write_text(json.dumps({
            "mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None, "authenticated": bool(session.authenticated),
        }))
        (self.folder / f"{name}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--security", choices=("starttls", "tls", "none"), default="starttls")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    args.spool.mkdir(parents=True, exist_ok=True)
    context = None
    if args.security != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()) == (args.user, args.password)
        return AuthResult(success=ok, handled=False)

    handler = Spool(args.spool)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname="mail.test",
            tls_context=context if args.security == "starttls" else None,
            require_starttls=args.security == "starttls",
            authenticator=authenticate if args.user else None,
            auth_required=bool(args.user),
            auth_require_tls=args.security == "starttls",  # implicit TLS is invisible to aiosmtpd
        )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0,
                                          ssl=context if args.security == "tls" else None)
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
