"""Serve the app with gunicorn: the console script the image's CMD runs."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from .app import create_app


class Server(BaseApplication):
    """gunicorn serving one Flask app object, configured from a dict."""

    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # older gunicorn releases lack some settings
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def options(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """gunicorn settings from the environment: PORT, HOST and WEB_CONCURRENCY.

    The image's user has no home and may run on a read-only root filesystem:
    no control socket (it would live in $HOME), worker heartbeats in memory.
    """
    env = os.environ if environ is None else environ
    host = env.get("HOST", "0.0.0.0")
    return {
        "bind": f"{f'[{host}]' if ':' in host else host}:{int(env.get('PORT', '8000'))}",  # [::]:8000
        "workers": int(env.get("WEB_CONCURRENCY", "2")),
        "accesslog": "-",
        # Within the 10 s `docker stop` waits before SIGKILL: requests in flight end first.
        "graceful_timeout": int(env.get("GRACEFUL_TIMEOUT", "8")),
        "control_socket_disable": True,
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }


def main() -> None:
    """Serve on $HOST:$PORT (0.0.0.0:8000 unless set) until stopped."""
    Server(create_app(), options()).run()


if __name__ == "__main__":
    main()
