"""Stand-ins the tool talks to: a registry that answers what a test tells it, and a logging engine."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any


class FakeRegistry:
    """An HTTP server on 127.0.0.1 whose answer to every manifest request is set by the test.

    ``answer`` is (status, headers) and ``body`` what a GET of a manifest gets; a 401 with a
    Bearer challenge sends the client to ``/token``, which hands out ``token-1``. Every
    request is logged with its headers.
    """

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, str]] = (404, {})
        self.body = b""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self) -> None:
                registry.requests.append((self.command, self.path, dict(self.headers)))
                if self.path.startswith("/token"):
                    body = json.dumps({"token": "token-1"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                status, headers = registry.answer
                if status == 401 and self.headers.get("Authorization") == "Bearer token-1" \
                        and "bearer" in headers.get("WWW-Authenticate", "").lower():
                    status, headers = 200, {"Docker-Content-Digest": "sha256:" + "b" * 64}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value.replace("{host}", registry.host))
                body = registry.body if self.command == "GET" and status == 200 else b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def logging_engine(folder: Path) -> tuple[Path, Path]:
    """An engine client that only logs its arguments and succeeds: (its path, its log)."""
    log = folder / "engine.log"
    script = folder / "engine"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


def scripted_engine(folder: Path, version: str, buildx: bool) -> tuple[Path, Path]:
    """An engine client that logs its arguments and succeeds, but that `--version` prints
    ``version`` and `buildx version` fails unless ``buildx``: (its path, its log)."""
    log = folder / "engine.log"
    script = folder / "engine"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n'
        f'[ "$1" = --version ] && echo "{version}"\n'
        f'[ "$1 $2" = "buildx version" ] && exit {0 if buildx else 1}\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


def closed_port() -> str:
    """127.0.0.1:<a port nothing listens on>."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


__all__ = ["FakeRegistry", "closed_port", "logging_engine", "os", "scripted_engine"]
