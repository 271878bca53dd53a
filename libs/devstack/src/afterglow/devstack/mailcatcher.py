"""A local mail catcher for ``make dev`` and ``make demo``: an SMTP server (aiosmtpd) on
127.0.0.1 that keeps every message it is given as an ``.eml`` file, and a small web page
listing them with each message's HTML rendered. Nothing is relayed anywhere.

    python -m afterglow.devstack.mailcatcher --dir .afterglow/dev/mail

A tenant sends to it with the SMTP channel ``{"provider": "smtp", "host": "127.0.0.1",
"port": 1025, "security": "none", "from_email": ...}``; the dev stack allows private
destinations (OUTBOUND_ALLOW_PRIVATE). Dev only: no TLS, no AUTH, no size limit beyond
aiosmtpd's default (32 MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import html
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

SMTP_PORT, HTTP_PORT = 1025, 8025
NAME = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{12}\.eml$")


class _Keeper:
    """aiosmtpd handler: every accepted message becomes one file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}.eml"
        # The envelope recipients are not in the headers (Bcc); keep them in front, as
        # a delivering server would.
        head = "".join(f"Delivered-To: {r}\r\n" for r in envelope.rcpt_tos).encode()
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(head + envelope.original_content)
        tmp.rename(self.folder / name)  # whole files only, for the page and for tests
        return "250 Message kept by the Afterglow mail catcher"


def read_message(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def summary(path: Path) -> dict[str, str]:
    msg = read_message(path)
    return {
        "file": path.name,
        "date": str(msg.get("Date", "")),
        "from": str(msg.get("From", "")),
        "to": str(msg.get("To", "")),
        "subject": str(msg.get("Subject", "")),
        "message_id": str(msg.get("Message-ID", "")),
    }


PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
    "<body style='font-family:sans-serif;margin:2rem'>{body}</body></html>"
)


class MailCatcher:
    """Both servers, started and stopped together."""

    def __init__(
        self,
        folder: Path,
        *,
        host: str = "127.0.0.1",
        smtp_port: int = SMTP_PORT,
        http_port: int = HTTP_PORT,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.host = host
        with socket.socket() as probe:
            probe.bind((host, smtp_port))  # taken: an OSError here, not in a thread later
        self.smtp = Controller(_Keeper(folder), hostname=host, port=smtp_port)
        self.http = ThreadingHTTPServer((host, http_port), self._handler())
        self.smtp_port = smtp_port
        self.url = f"http://{host}:{self.http.server_address[1]}/"

    def messages(self) -> list[Path]:
        """Newest first."""
        return sorted(
            (p for p in self.folder.iterdir() if NAME.match(p.name)),
            key=lambda p: p.name,
            reverse=True,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: make dev prints enough

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _page(self, title: str, body: str, status: int = 200) -> None:
                out = PAGE.format(title=html.escape(title), body=body).encode()
                self._send(status, out, "text/html; charset=utf-8")

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/":
                    return self._index()
                if path == "/messages.json":
                    data = [summary(p) for p in catcher.messages()]
                    return self._send(200, json.dumps(data).encode(), "application/json")
                m = re.match(r"^/m/([^/]+?)(\.raw)?$", path)
                if m and NAME.match(m.group(1)) and (catcher.folder / m.group(1)).is_file():
                    file = catcher.folder / m.group(1)
                    if m.group(2):
                        return self._send(200, file.read_bytes(), "message/rfc822")
                    return self._message(file)
                self._page("Not found", "<p>No such message.</p>", 404)

            def _index(self) -> None:
                rows = "".join(
                    "<tr><td>{date}</td><td>{to}</td><td>{frm}</td>"
                    "<td><a href='/m/{file}'>{subject}</a></td></tr>".format(
                        date=html.escape(s["date"]),
                        to=html.escape(s["to"]),
                        frm=html.escape(s["from"]),
                        file=s["file"],
                        subject=html.escape(s["subject"] or "(no subject)"),
                    )
                    for s in map(summary, catcher.messages())
                )
                body = (
                    f"<h1>Mail catcher</h1><p>{len(catcher.messages())} message(s) in "
                    f"<code>{html.escape(str(catcher.folder))}</code></p>"
                    "<table cellpadding=6><tr><th>Date</th><th>To</th><th>From</th>"
                    f"<th>Subject</th></tr>{rows}</table>"
                )
                self._page("Mail catcher", body)

            def _message(self, file: Path) -> None:
                msg = read_message(file)
                heads = "".join(
                    f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in msg.items()
                )
                rich = msg.get_body(("html",))
                plain = msg.get_body(("plain",))
                # The HTML in a sandboxed frame: no scripts, no access to this page.
                shown = (
                    "<iframe sandbox style='width:100%;height:30rem;border:1px solid #ccc' "
                    f'srcdoc="{html.escape(rich.get_content())}"></iframe>'
                    if isinstance(rich, EmailMessage)
                    else ""
                )
                text = (
                    f"<pre>{html.escape(plain.get_content())}</pre>"
                    if isinstance(plain, EmailMessage)
                    else ""
                )
                body = (
                    f"<p><a href='/'>all messages</a> | <a href='/m/{file.name}.raw'>.eml</a></p>"
                    f"<table>{heads}</table><h2>HTML</h2>{shown}<h2>Text</h2>{text}"
                )
                self._page(str(msg.get("Subject", file.name)), body)

        return Handler

    def start(self) -> None:
        self.smtp.start()
        threading.Thread(
            target=self.http.serve_forever, name="mailcatcher-web", daemon=True
        ).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.smtp.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[MailCatcher]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".afterglow/dev/mail")
    parser.add_argument("--smtp-port", type=int, default=SMTP_PORT)
    parser.add_argument("--http-port", type=int, default=HTTP_PORT)
    args = parser.parse_args(argv)
    with MailCatcher(
        Path(args.dir), smtp_port=args.smtp_port, http_port=args.http_port
    ).running() as catcher:
        print(f"SMTP on 127.0.0.1:{catcher.smtp_port}; messages at {catcher.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
