"""Stand-ins the tool talks to: a registry that answers what a test tells it, and a logging engine."""

from __future__ import annotations

import hashlib
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
                if self.path == "/v2/":  # the API's base: a registry answers it (clients ping it first)
                    status, headers = 200, {}
                if status == 401 and self.headers.get("Authorization") == "Bearer token-1" \
                        and "bearer" in headers.get("WWW-Authenticate", "").lower():
                    status, headers = 200, {"Docker-Content-Digest": "sha256:" + "b" * 64}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value.replace("{host}", registry.host))
                body = registry.body if self.command == "GET" and status == 200 else b""
                if self.command == "GET" and status == 404:  # what a registry says of a tag it lacks
                    body = b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}'
                    self.send_header("Content-Type", "application/json")
                # A HEAD is told the length a GET would get, as registries do: clients size the fetch by it.
                self.send_header("Content-Length", str(len(registry.body) if status == 200 else len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> str:
        """Answer every manifest request with ``status`` (a 200 with ``body`` and its real
        digest, as a registry does); return that digest."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = headers or {}
        if status == 200:
            headers = {"Docker-Content-Digest": digest, "Content-Type": "application/vnd.oci.image.index.v1+json",
                       **headers}
        self.answer, self.body = (status, headers), body
        return digest

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Registry questions (`buildx imagetools`) and bake's plan (`buildx bake ... --print`) go to the
# real client: they build and push nothing.
REAL = os.environ.get("DOCKER", "/usr/bin/docker")
REGISTRY_QUESTIONS = (f'[ "$1 $2" = "buildx imagetools" ] && exec {REAL} "$@"\n'
                      f'case " $* " in *" --print "*) [ "$1 $2" = "buildx bake" ] && exec {REAL} "$@" ;; esac\n')


def logging_engine(folder: Path) -> tuple[Path, Path]:
    """An engine client that only logs its arguments and succeeds, but asks registries for
    real: (its path, its log)."""
    log = folder / "engine.log"
    script = folder / "engine"
    script.write_text(f'#!/bin/sh\n{REGISTRY_QUESTIONS}printf "%s\\n" "$*" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


def scripted_engine(folder: Path, version: str, buildx: bool) -> tuple[Path, Path]:
    """An engine client that logs its arguments and succeeds, but that `--version` prints
    ``version`` and every buildx command fails unless ``buildx``: (its path, its log)."""
    log = folder / "engine.log"
    script = folder / "engine"
    refusal = """{ echo "docker: 'buildx' is not a docker command." >&2; exit 1; }"""
    missing = "" if buildx else f"""[ "$1" = buildx ] && {refusal}\n"""
    script.write_text(
        f'#!/bin/sh\n{missing}{REGISTRY_QUESTIONS}printf "%s\\n" "$*" >> {log}\n'
        f'[ "$1" = --version ] && echo "{version}"\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log.write_text("")
    return script, log


class TricklingServer:
    """A TCP server on 127.0.0.1 that answers every connection one byte at a time, slowly."""

    def __init__(self, every: float = 1.0) -> None:
        import socket
        import time

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return

                def trickle(conn: socket.socket = conn) -> None:
                    try:
                        conn.recv(65536)  # the request first: an answer before it is a protocol error, not slowness
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 10000:
                            conn.send(bytes([byte]))
                            time.sleep(every)
                    except OSError:
                        pass
                    finally:
                        conn.close()

                threading.Thread(target=trickle, daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def closed_port() -> str:
    """127.0.0.1:<a port nothing listens on>."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


__all__ = ["FakeRegistry", "TricklingServer", "closed_port", "logging_engine", "os", "scripted_engine"]
